//! /proc/kcore read at random over SFTP: the target's own `sftp-server`,
//! started as root in an exec channel, serves the file; physical memory is
//! the kcore direct-map segments (`p_paddr`) over iomem's System RAM.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};

use crate::pipeline::source::kcore::{self, Header, KCORE, Piece};
use crate::record::PhysRange;
use crate::transport::{SftpError, SftpFile};

/// The longest one SFTP read asks for: OpenSSH's sftp-server answers up to
/// 256 KiB a request.
const MAX_READ: u64 = 64 << 10;

/// An open /proc/kcore on the target.
pub struct RemoteKcore {
    file: SftpFile,
}

impl RemoteKcore {
    pub async fn open(stream: crate::transport::ExecStream) -> anyhow::Result<Self> {
        match SftpFile::open(stream, KCORE).await {
            Ok(file) => Ok(RemoteKcore { file }),
            Err(SftpError::Refused(e)) => bail!("{}", explain_open_failure(&e)),
            Err(e) => Err(anyhow!("{e}: sftp-server could not be started as root")),
        }
    }

    /// Reads exactly `buf.len()` bytes at `offset` (SFTP may answer short).
    pub async fn read_exact(&self, offset: u64, buf: &mut [u8]) -> anyhow::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let want = (buf.len() - done).min(MAX_READ as usize) as u32;
            let data = self.file.read_at(at, want).await.map_err(|e| match e {
                SftpError::Lost(_) => anyhow!(
                    "{e} while reading {KCORE} at {at:#x}; nothing was written on the host: run again"
                ),
                e => anyhow!("reading {KCORE} at {at:#x}: {e}"),
            })?;
            if data.is_empty() {
                bail!("{KCORE} ended at {at:#x}");
            }
            let n = data.len().min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&data[..n]);
            done += n;
        }
        Ok(())
    }

    /// The ELF program headers, read as far as they reach.
    pub async fn header(&self) -> anyhow::Result<(Vec<u8>, Vec<kcore::Segment>)> {
        let mut want = kcore::HEADER_PROBE;
        loop {
            let mut bytes = vec![0u8; want as usize];
            self.read_exact(0, &mut bytes).await?;
            match kcore::parse_header(&bytes)? {
                Header::Segments(segments) => return Ok((bytes, segments)),
                Header::NeedBytes(n) if n > want => want = n,
                Header::NeedBytes(_) => bail!("{KCORE} program headers are cut short"),
            }
        }
    }

    /// The text of the kernel's VMCOREINFO note, when kcore carries one.
    pub async fn vmcoreinfo(&self, header: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
        for (offset, size) in kcore::note_segments(header)? {
            if size == 0 || size > 1 << 20 {
                continue;
            }
            let mut notes = vec![0u8; size as usize];
            self.read_exact(offset, &mut notes)
                .await
                .context("reading kcore's notes")?;
            if let Some(note) = kcore::elf_notes(&notes)
                .into_iter()
                .find(|n| n.name == b"VMCOREINFO")
            {
                return Ok(Some(note.desc.to_vec()));
            }
        }
        Ok(None)
    }

    pub async fn close(self) {
        self.file.close().await;
    }
}

fn explain_open_failure(error: &str) -> String {
    format!(
        "cannot open {KCORE} on the target ({error}): it needs root, and a kernel in lockdown=confidentiality refuses it; a LiME capture is refused there too unless the module is signed for that kernel"
    )
}

/// Physical memory as kcore serves it: System RAM mapped onto the
/// direct-map segments, each piece a physical range at a file offset.
pub struct PhysicalLayout {
    pieces: Vec<(PhysRange, u64)>,
}

impl PhysicalLayout {
    pub fn new(ram: &[PhysRange], segments: &[kcore::Segment]) -> anyhow::Result<Self> {
        let plan = kcore::plan(ram, segments);
        kcore::check_plan(&plan, segments)?;
        let mut pieces = Vec::new();
        for range in &plan.ranges {
            let mut start = range.range.start;
            for Piece { file_offset, len } in &range.pieces {
                pieces.push((
                    PhysRange {
                        start,
                        end: start + len - 1,
                    },
                    *file_offset,
                ));
                start += len;
            }
        }
        Ok(PhysicalLayout { pieces })
    }

    /// `[start, end)` of every piece, for `PhysicalMemory::from_source`.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        self.pieces
            .iter()
            .map(|(r, _)| (r.start, r.end + 1))
            .collect()
    }

    pub fn ram_bytes(&self) -> u64 {
        self.pieces.iter().map(|(r, _)| r.bytes()).sum()
    }

    /// The file offset of physical `addr`, and how many bytes follow it in
    /// the same piece.
    fn offset_of(&self, addr: u64) -> Option<(u64, u64)> {
        let at = self.pieces.partition_point(|(r, _)| r.end < addr);
        let (range, offset) = self.pieces.get(at)?;
        (range.start <= addr).then(|| (offset + (addr - range.start), range.end - addr + 1))
    }
}

/// The core's page source: each miss becomes SFTP reads on the runtime,
/// waited for on the analysis thread. A failure is kept, so the command can
/// say the rows are incomplete even where a plugin recovered.
pub struct KcoreSource {
    pub kcore: std::sync::Arc<RemoteKcore>,
    pub layout: std::sync::Arc<PhysicalLayout>,
    pub runtime: tokio::runtime::Handle,
    /// Reads after this instant fail: every plugin has a deadline.
    pub deadline: Mutex<Option<Instant>>,
    pub failure: Mutex<Option<String>>,
}

impl KcoreSource {
    pub fn set_deadline(&self, after: Duration) {
        if let Ok(mut d) = self.deadline.lock() {
            *d = Some(Instant::now() + after);
        }
    }

    pub fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    fn fail(&self, why: String) -> String {
        if let Ok(mut f) = self.failure.lock()
            && f.is_none()
        {
            *f = Some(why.clone());
        }
        why
    }
}

impl memimage::format::PageSource for KcoreSource {
    fn read_at(&self, addr: u64, buf: &mut [u8]) -> Result<(), String> {
        if self
            .deadline
            .lock()
            .ok()
            .and_then(|d| *d)
            .is_some_and(|d| Instant::now() > d)
        {
            return Err(self.fail("the plugin's deadline passed".into()));
        }
        let Some((offset, left)) = self.layout.offset_of(addr) else {
            return Err(format!("physical {addr:#x} is outside System RAM"));
        };
        if (buf.len() as u64) > left {
            return Err(format!("a read at {addr:#x} crosses the end of its range"));
        }
        self.runtime
            .block_on(self.kcore.read_exact(offset, buf))
            .map_err(|e| self.fail(format!("{e:#}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn physical_addresses_map_to_kcore_offsets_within_their_piece() {
        // RAM 0x1000-0x9ffff and 0x100000-0x1fffffff; the direct map at
        // file offset 0x10000 + paddr.
        let segments = [kcore::Segment {
            offset: 0x10000,
            vaddr: 0xffff_8880_0000_0000,
            paddr: 0,
            filesz: 0x2000_0000,
        }];
        let ram = [
            PhysRange {
                start: 0x1000,
                end: 0x9_ffff,
            },
            PhysRange {
                start: 0x10_0000,
                end: 0x1fff_ffff,
            },
        ];
        let layout = PhysicalLayout::new(&ram, &segments).unwrap();
        assert_eq!(
            layout.ranges(),
            [(0x1000, 0xa_0000), (0x10_0000, 0x2000_0000)]
        );
        assert_eq!(layout.ram_bytes(), 0x9_f000 + 0x1ff0_0000);
        assert_eq!(layout.offset_of(0x1000), Some((0x11000, 0x9_f000)));
        assert_eq!(layout.offset_of(0x9_ffff), Some((0xa_ffff, 1)));
        assert_eq!(layout.offset_of(0xa_0000), None);
        assert_eq!(layout.offset_of(0x1fff_f000), Some((0x2000_f000, 0x1000)));
        assert_eq!(layout.offset_of(0x2000_0000), None);
    }
}

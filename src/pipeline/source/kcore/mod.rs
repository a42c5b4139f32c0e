//! The /proc/kcore source: read `/proc/kcore` over SSH with `dd` and frame
//! it as a standard LiME image, so everything after the source (validation,
//! hashing, sink, manifest, analysis) is the LiME path unchanged.
//! `capture::kcore` runs it.
//!
//! /proc/kcore is an ELF core file of the kernel's address space. Its PT_LOAD
//! segments for the direct map carry the physical address in `p_paddr` (the
//! kernel's KCORE_RAM entries); vmalloc, vmemmap and module areas have
//! `p_paddr` = -1. mshot reads the program headers (one `dd` of the file's
//! start), maps each `System RAM` range of /proc/iomem onto the segments that
//! cover it, and streams all pieces with one remote command (a chain of
//! `dd iflag=skip_bytes,count_bytes`), adding LiME range headers locally.
//! Nothing is pushed to the target and nothing is loaded.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use anyhow::{anyhow, bail};
use tokio::io::{AsyncRead, ReadBuf};

use crate::pipeline::lime::{HEADER_LEN, header_bytes};
use crate::record::{KcoreRecord, SegmentRecord};
use crate::target::{PhysRange, quote};

pub const KCORE: &str = "/proc/kcore";
/// Bytes fetched first: the ELF header and, on every kernel seen, all program headers.
pub const HEADER_PROBE: u64 = 64 * 1024;
const PAGE: u64 = 4096;

/// A PT_LOAD segment of /proc/kcore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub offset: u64,
    pub vaddr: u64,
    /// Physical address, or `u64::MAX` where the kernel gives none.
    pub paddr: u64,
    pub filesz: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Header {
    Segments(Vec<Segment>),
    /// The program headers end beyond the bytes given: fetch this many.
    NeedBytes(u64),
}

/// Parses the ELF header and program headers at the start of /proc/kcore.
pub fn parse_header(bytes: &[u8]) -> anyhow::Result<Header> {
    Ok(match program_headers(bytes)? {
        Err(need) => Header::NeedBytes(need),
        Ok(entries) => Header::Segments(
            entries
                .into_iter()
                .filter(|e| e.kind == 1)
                .map(|e| e.segment)
                .collect(),
        ),
    })
}

/// The PT_NOTE segments (file offset, size) of /proc/kcore's header, where
/// the kernel puts its VMCOREINFO.
pub fn note_segments(bytes: &[u8]) -> anyhow::Result<Vec<(u64, u64)>> {
    Ok(program_headers(bytes)?
        .map_err(|need| anyhow!("{KCORE} program headers need {need} bytes"))?
        .into_iter()
        .filter(|e| e.kind == 4)
        .map(|e| (e.segment.offset, e.segment.filesz))
        .collect())
}

/// One program header: its type and where its bytes are.
struct Entry {
    kind: u32,
    segment: Segment,
}

/// Every program header, or how many bytes the table needs.
fn program_headers(bytes: &[u8]) -> anyhow::Result<Result<Vec<Entry>, u64>> {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        bail!("{KCORE} does not start with an ELF header");
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        bail!("{KCORE} is not a 64-bit little-endian ELF file; mshot reads only those");
    }
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    let u32_at = |b: &[u8], at: usize| {
        let mut word = [0u8; 4];
        word.copy_from_slice(&b[at..at + 4]);
        u32::from_le_bytes(word)
    };
    let u64_at = |b: &[u8], at: usize| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(word)
    };
    if u16_at(16) != 4 {
        bail!("{KCORE} is not an ELF core file (e_type {})", u16_at(16));
    }
    let phoff = u64_at(bytes, 0x20);
    let phentsize = u16_at(0x36) as u64;
    let phnum = u16_at(0x38) as u64;
    if phentsize < 56 {
        bail!("{KCORE} has program headers of {phentsize} bytes; expected 56");
    }
    let end = phoff
        .checked_add(phentsize * phnum)
        .ok_or_else(|| anyhow!("{KCORE} program header table overflows"))?;
    if end > bytes.len() as u64 {
        if end > 64 << 20 {
            bail!("{KCORE} claims a program header table of {end} bytes");
        }
        return Ok(Err(end));
    }
    let mut entries = Vec::new();
    for i in 0..phnum {
        let at = (phoff + i * phentsize) as usize;
        let entry = &bytes[at..at + 56];
        entries.push(Entry {
            kind: u32_at(entry, 0),
            segment: Segment {
                offset: u64_at(entry, 8),
                vaddr: u64_at(entry, 16),
                paddr: u64_at(entry, 24),
                filesz: u64_at(entry, 32),
            },
        });
    }
    Ok(Ok(entries))
}

/// One ELF note: `namesz`, `descsz`, `type`, then name and descriptor,
/// each padded to 4 bytes (kcore's PT_NOTE, /sys/kernel/notes).
pub struct ElfNote<'a> {
    pub name: &'a [u8],
    pub kind: u32,
    pub desc: &'a [u8],
}

/// The notes in `bytes`, up to the first that does not fit.
pub fn elf_notes(bytes: &[u8]) -> Vec<ElfNote<'_>> {
    let word = |at: usize| -> Option<u32> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let pad = |n: usize| n.checked_add(3).map(|v| v & !3);
    let mut notes = Vec::new();
    let mut at = 0usize;
    while let (Some(namesz), Some(descsz), Some(kind)) = (word(at), word(at + 4), word(at + 8)) {
        let (namesz, descsz) = (namesz as usize, descsz as usize);
        let name_at = at + 12;
        let Some(desc_at) = pad(namesz).and_then(|n| name_at.checked_add(n)) else {
            break;
        };
        let (Some(name), Some(desc)) = (
            bytes.get(name_at..name_at + namesz),
            desc_at
                .checked_add(descsz)
                .and_then(|end| bytes.get(desc_at..end)),
        ) else {
            break;
        };
        notes.push(ElfNote {
            name: name.strip_suffix(b"\0").unwrap_or(name),
            kind,
            desc,
        });
        match pad(descsz).and_then(|n| desc_at.checked_add(n)) {
            Some(next) => at = next,
            None => break,
        }
    }
    notes
}

/// A run of bytes in /proc/kcore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub file_offset: u64,
    pub len: u64,
}

/// A LiME range of the image and where its bytes are in /proc/kcore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedRange {
    pub range: PhysRange,
    pub pieces: Vec<Piece>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub ranges: Vec<PlannedRange>,
    /// System RAM that no segment covers.
    pub uncovered: Vec<PhysRange>,
}

impl Plan {
    pub fn image_ranges(&self) -> Vec<PhysRange> {
        self.ranges.iter().map(|r| r.range).collect()
    }
}

/// Maps System RAM onto kcore segments with a physical address. Where two
/// segments cover an address (the kernel text also appears in the direct
/// map), the one reaching further is used, so a range needs few pieces.
pub fn plan(ram: &[PhysRange], segments: &[Segment]) -> Plan {
    let physical: Vec<&Segment> = segments
        .iter()
        .filter(|s| s.paddr != u64::MAX && s.filesz > 0)
        .collect();
    let mut plan = Plan::default();
    for range in ram {
        let mut current: Option<PlannedRange> = None;
        let mut at = range.start;
        let last = range.end;
        loop {
            let best = physical
                .iter()
                .filter(|s| s.paddr <= at && at - s.paddr < s.filesz)
                .max_by_key(|s| s.paddr + (s.filesz - 1));
            match best {
                Some(s) => {
                    let seg_last = s.paddr + (s.filesz - 1);
                    let piece_last = seg_last.min(last);
                    let piece = Piece {
                        file_offset: s.offset + (at - s.paddr),
                        len: piece_last - at + 1,
                    };
                    let planned = current.get_or_insert_with(|| PlannedRange {
                        range: PhysRange { start: at, end: at },
                        pieces: Vec::new(),
                    });
                    planned.range.end = piece_last;
                    match planned.pieces.last_mut() {
                        Some(p) if p.file_offset + p.len == piece.file_offset => p.len += piece.len,
                        _ => planned.pieces.push(piece),
                    }
                    if piece_last == last {
                        break;
                    }
                    at = piece_last + 1;
                }
                None => {
                    if let Some(done) = current.take() {
                        plan.ranges.push(done);
                    }
                    // Skip to the next segment start inside the range, if any.
                    let next = physical
                        .iter()
                        .map(|s| s.paddr)
                        .filter(|&p| p > at && p <= last)
                        .min();
                    let gap_last = next.map(|n| n - 1).unwrap_or(last);
                    plan.uncovered.push(PhysRange {
                        start: at,
                        end: gap_last,
                    });
                    match next {
                        Some(n) => at = n,
                        None => break,
                    }
                }
            }
        }
        if let Some(done) = current.take() {
            plan.ranges.push(done);
        }
    }
    plan
}

/// True when `gap` holds no whole page: kcore works in pages, so the partial
/// page at the end of a System RAM range (iomem's 0x9fbff) is never in it.
pub fn is_partial_page(gap: &PhysRange) -> bool {
    let first_page = gap.start.div_ceil(PAGE) * PAGE;
    first_page.checked_add(PAGE - 1).is_none_or(|e| e > gap.end)
}

/// Refuses a plan that leaves real memory out, and explains.
pub fn check_plan(plan: &Plan, segments: &[Segment]) -> anyhow::Result<()> {
    if !segments
        .iter()
        .any(|s| s.paddr != u64::MAX && s.paddr != 0 && s.filesz > 0)
        && plan.ranges.is_empty()
    {
        bail!(
            "{KCORE} gives no physical addresses for its segments (kernels before 4.19 do not); use --method lime"
        );
    }
    let missing: Vec<String> = plan
        .uncovered
        .iter()
        .filter(|gap| !is_partial_page(gap))
        .map(|g| format!("{:#x}-{:#x}", g.start, g.end))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{KCORE} does not cover System RAM {} listed in /proc/iomem; an image without it would be incomplete: use --method lime",
            missing.join(",")
        );
    }
    if plan.ranges.is_empty() {
        bail!("{KCORE} covers none of the System RAM in /proc/iomem; use --method lime");
    }
    Ok(())
}

pub fn header_command(bytes: u64) -> String {
    format!("dd if={KCORE} bs={bytes} count=1")
}

/// One remote command that writes every piece to stdout in order; `&&` stops
/// at the first failing dd, and its exit status tells us.
pub fn stream_command(plan: &Plan) -> String {
    plan.ranges
        .iter()
        .flat_map(|r| r.pieces.iter())
        .map(|p| {
            format!(
                "dd if={} bs=1048576 iflag=skip_bytes,count_bytes,fullblock skip={} count={}",
                quote(KCORE),
                p.file_offset,
                p.len
            )
        })
        .collect::<Vec<_>>()
        .join(" && ")
}

/// Turns a failed header read into a reason a person can act on.
pub fn explain_read_failure(stderr: &str) -> String {
    let lower = stderr.to_ascii_lowercase();
    if lower.contains("permission denied") || lower.contains("operation not permitted") {
        format!(
            "cannot read {KCORE}: {stderr}; it needs root (CAP_SYS_RAWIO), and kernel lockdown in confidentiality mode or an LSM may forbid it"
        )
    } else if lower.contains("no such file") {
        format!("this kernel has no {KCORE} (built without CONFIG_PROC_KCORE): {stderr}")
    } else if lower.contains("invalid argument") || lower.contains("unknown") {
        format!(
            "dd on the target cannot read {KCORE} by byte offsets ({stderr}); it needs iflag=skip_bytes,count_bytes (GNU coreutils 8.16+, busybox 1.24+)"
        )
    } else {
        format!("cannot read {KCORE}: {stderr}")
    }
}

pub fn record(plan: &Plan, segments: &[Segment]) -> KcoreRecord {
    let used: Vec<SegmentRecord> = segments
        .iter()
        .filter(|s| {
            plan.ranges.iter().flat_map(|r| &r.pieces).any(|p| {
                p.file_offset >= s.offset && p.file_offset < s.offset.saturating_add(s.filesz)
            })
        })
        .map(|s| SegmentRecord {
            file_offset: format!("{:#x}", s.offset),
            vaddr: format!("{:#x}", s.vaddr),
            paddr: format!("{:#x}", s.paddr),
            bytes: s.filesz,
        })
        .collect();
    KcoreRecord {
        segments_used: used,
        not_covered: plan
            .uncovered
            .iter()
            .map(crate::record::RangeRecord::from)
            .collect(),
        remote_reads: plan.ranges.iter().map(|r| r.pieces.len()).sum(),
    }
}

/// Frames the raw bytes of the planned ranges, as dd sends them back to back,
/// into a LiME image: a 32-byte header before each range. If the remote side
/// sends more than planned, that is an error; fewer ends the stream early,
/// which the LiME validator reports as a truncated range.
pub struct LimeFramer<R> {
    inner: R,
    ranges: Vec<PhysRange>,
    index: usize,
    header: [u8; HEADER_LEN],
    header_sent: usize,
    remaining: u64,
}

impl<R> LimeFramer<R> {
    pub fn new(inner: R, ranges: Vec<PhysRange>) -> Self {
        LimeFramer {
            inner,
            ranges,
            index: 0,
            header: [0; HEADER_LEN],
            header_sent: HEADER_LEN,
            remaining: 0,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for LimeFramer<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if this.remaining == 0 && this.header_sent == HEADER_LEN {
            if this.index == this.ranges.len() {
                // Every planned byte is in: the source must have nothing more.
                let mut probe = [0u8; 1];
                let mut rb = ReadBuf::new(&mut probe);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
                if !rb.filled().is_empty() {
                    return Poll::Ready(Err(std::io::Error::other(
                        "the target sent more bytes than the planned kcore ranges",
                    )));
                }
                return Poll::Ready(Ok(()));
            }
            let range = this.ranges[this.index];
            this.header = header_bytes(range);
            this.header_sent = 0;
            this.remaining = range.bytes();
            this.index += 1;
        }
        if this.header_sent < HEADER_LEN {
            let n = (HEADER_LEN - this.header_sent).min(buf.remaining());
            buf.put_slice(&this.header[this.header_sent..this.header_sent + n]);
            this.header_sent += n;
            return Poll::Ready(Ok(()));
        }
        let max = this.remaining.min(buf.remaining() as u64) as usize;
        let dst = buf.initialize_unfilled_to(max);
        let mut sub = ReadBuf::new(dst);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut sub))?;
        let n = sub.filled().len();
        buf.advance(n);
        this.remaining -= n as u64;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests;

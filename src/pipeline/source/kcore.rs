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
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Program headers as the 6.1 lab guest's /proc/kcore has them.
    fn lab_segments() -> Vec<Segment> {
        let seg = |offset, vaddr, paddr, filesz| Segment {
            offset,
            vaddr,
            paddr,
            filesz,
        };
        vec![
            seg(0x7fff98203000, 0xffffffff98200000, 0x1b400000, 0x3430000),
            seg(0x4b3180003000, 0xffffcb3180000000, u64::MAX, 0x1fffffffffff),
            seg(0x7fffc0003000, 0xffffffffc0000000, u64::MAX, 0x3f000000),
            seg(0xa3680004000, 0xffff8a3680001000, 0x1000, 0x9e000),
            seg(0x798800003000, 0xfffff98800000000, u64::MAX, 0x3000),
            seg(0xa3680103000, 0xffff8a3680100000, 0x100000, 0x1fee0000),
            seg(0x798800007000, 0xfffff98800004000, u64::MAX, 0x7fc000),
        ]
    }

    fn elf(segments: &[Segment], with_note: bool) -> Vec<u8> {
        let mut phdrs = Vec::new();
        if with_note {
            let mut note = [0u8; 56];
            note[0..4].copy_from_slice(&4u32.to_le_bytes());
            phdrs.push(note);
        }
        for s in segments {
            let mut p = [0u8; 56];
            p[0..4].copy_from_slice(&1u32.to_le_bytes());
            p[4..8].copy_from_slice(&7u32.to_le_bytes());
            p[8..16].copy_from_slice(&s.offset.to_le_bytes());
            p[16..24].copy_from_slice(&s.vaddr.to_le_bytes());
            p[24..32].copy_from_slice(&s.paddr.to_le_bytes());
            p[32..40].copy_from_slice(&s.filesz.to_le_bytes());
            p[40..48].copy_from_slice(&s.filesz.to_le_bytes());
            phdrs.push(p);
        }
        let mut out = vec![0u8; 64];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = 2;
        out[5] = 1;
        out[16..18].copy_from_slice(&4u16.to_le_bytes());
        out[18..20].copy_from_slice(&62u16.to_le_bytes());
        out[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        out[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        out[0x38..0x3a].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
        for p in phdrs {
            out.extend_from_slice(&p);
        }
        out
    }

    #[test]
    fn parses_program_headers() {
        let bytes = elf(&lab_segments(), true);
        assert_eq!(
            parse_header(&bytes).unwrap(),
            Header::Segments(lab_segments())
        );
        assert_eq!(
            parse_header(&bytes[..200]).unwrap(),
            Header::NeedBytes(bytes.len() as u64)
        );
        assert!(
            parse_header(b"not an elf file at all, really not, no no no no no no no no no")
                .is_err()
        );
        let mut exec = bytes.clone();
        exec[16] = 2;
        assert!(
            parse_header(&exec)
                .unwrap_err()
                .to_string()
                .contains("core")
        );
        let mut be = bytes;
        be[5] = 2;
        assert!(parse_header(&be).is_err());
    }

    #[test]
    fn plans_the_lab_guest() {
        let ram = [
            PhysRange {
                start: 0x1000,
                end: 0x9fbff,
            },
            PhysRange {
                start: 0x100000,
                end: 0x1ffdffff,
            },
        ];
        let segments = lab_segments();
        let plan = plan(&ram, &segments);
        assert_eq!(
            plan.ranges,
            vec![
                PlannedRange {
                    range: PhysRange {
                        start: 0x1000,
                        end: 0x9efff
                    },
                    pieces: vec![Piece {
                        file_offset: 0xa3680004000,
                        len: 0x9e000
                    }],
                },
                // The direct map, not the kernel-text segment inside it.
                PlannedRange {
                    range: PhysRange {
                        start: 0x100000,
                        end: 0x1ffdffff
                    },
                    pieces: vec![Piece {
                        file_offset: 0xa3680103000,
                        len: 0x1fee0000
                    }],
                },
            ]
        );
        assert_eq!(
            plan.uncovered,
            vec![PhysRange {
                start: 0x9f000,
                end: 0x9fbff
            }]
        );
        check_plan(&plan, &segments).unwrap();
        let command = stream_command(&plan);
        assert_eq!(command.matches("dd if=/proc/kcore").count(), 2);
        assert!(command.contains(&format!("skip={} count={}", 0xa3680103000u64, 0x1fee0000)));
        let rec = record(&plan, &segments);
        assert_eq!(rec.segments_used.len(), 2);
        assert_eq!(rec.remote_reads, 2);
    }

    #[test]
    fn refuses_missing_memory() {
        let ram = [PhysRange {
            start: 0x100000,
            end: 0x4fffffff,
        }];
        let plan = plan(&ram, &lab_segments());
        let e = check_plan(&plan, &lab_segments()).unwrap_err().to_string();
        assert!(e.contains("0x1ffe0000-0x4fffffff"), "{e}");

        // Old kernels: no physical addresses at all.
        let none: Vec<Segment> = lab_segments()
            .into_iter()
            .map(|s| Segment {
                paddr: u64::MAX,
                ..s
            })
            .collect();
        let plan = super::plan(&ram, &none);
        assert!(check_plan(&plan, &none).is_err());
    }

    #[test]
    fn splits_at_holes_and_joins_adjacent_segments() {
        let seg = |offset, paddr, filesz| Segment {
            offset,
            vaddr: 0,
            paddr,
            filesz,
        };
        // Two adjacent segments, contiguous in the file: one piece.
        let segments = [seg(0x10000, 0x0, 0x2000), seg(0x12000, 0x2000, 0x2000)];
        let p = plan(
            &[PhysRange {
                start: 0,
                end: 0x3fff,
            }],
            &segments,
        );
        assert_eq!(p.ranges.len(), 1);
        assert_eq!(p.ranges[0].pieces.len(), 1);
        // A hole in the middle: two LiME ranges and the hole reported.
        let segments = [seg(0x10000, 0x0, 0x1000), seg(0x50000, 0x3000, 0x1000)];
        let p = plan(
            &[PhysRange {
                start: 0,
                end: 0x3fff,
            }],
            &segments,
        );
        assert_eq!(p.image_ranges().len(), 2);
        assert_eq!(
            p.uncovered,
            vec![PhysRange {
                start: 0x1000,
                end: 0x2fff
            }]
        );
        assert!(!is_partial_page(&p.uncovered[0]));
        assert!(is_partial_page(&PhysRange {
            start: 0x9f000,
            end: 0x9fbff
        }));
        assert!(is_partial_page(&PhysRange {
            start: 0x9f800,
            end: 0xa07ff
        }));
    }

    #[tokio::test]
    async fn frames_lime_ranges() {
        let ranges = vec![
            PhysRange {
                start: 0x1000,
                end: 0x1fff,
            },
            PhysRange {
                start: 0x5000,
                end: 0x5003,
            },
        ];
        let raw: Vec<u8> = (0..4100u32).map(|i| i as u8).collect();
        let mut out = Vec::new();
        LimeFramer::new(std::io::Cursor::new(raw.clone()), ranges.clone())
            .read_to_end(&mut out)
            .await
            .unwrap();
        let mut validator = crate::pipeline::lime::LimeValidator::new();
        validator.feed(&out).unwrap();
        assert_eq!(validator.finish().unwrap(), ranges);
        assert_eq!(&out[32..32 + 4096], &raw[..4096]);
        assert_eq!(&out[out.len() - 4..], &raw[4096..]);

        // More than planned is an error; fewer is a short (invalid) image.
        let mut long = raw.clone();
        long.push(0);
        let mut sink = Vec::new();
        assert!(
            LimeFramer::new(std::io::Cursor::new(long), ranges.clone())
                .read_to_end(&mut sink)
                .await
                .is_err()
        );
        let mut short = Vec::new();
        LimeFramer::new(std::io::Cursor::new(raw[..100].to_vec()), ranges)
            .read_to_end(&mut short)
            .await
            .unwrap();
        let mut validator = crate::pipeline::lime::LimeValidator::new();
        validator.feed(&short).unwrap();
        assert!(validator.finish().is_err());
    }

    #[test]
    fn explains_failures() {
        assert!(explain_read_failure("dd: /proc/kcore: Permission denied").contains("root"));
        assert!(
            explain_read_failure("dd: can't open '/proc/kcore': No such file or directory")
                .contains("CONFIG_PROC_KCORE")
        );
    }
}

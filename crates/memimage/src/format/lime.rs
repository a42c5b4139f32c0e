//! LiME range headers (version 1) and AVML's compressed variant (version 2).
//!
//! Layout: repeated 32-byte headers `{u32 magic, u32 version, u64 start,
//! u64 end (inclusive), u64 reserved}`. Version 1 is followed by
//! `end - start + 1` raw bytes; version 2 by a snappy frame stream and the
//! stream's length as a trailing little-endian u64. Arithmetic is checked
//! everywhere: the headers come from an untrusted file.

use super::avml::{AVML_MAGIC, AVML_VERSION, SnappyRange};
use super::{Backing, FormatError, ImageFormat, Range};

/// "EMiL" read as a little-endian u32.
pub const LIME_MAGIC: u32 = 0x4C69_4D45;
pub const LIME_VERSION: u32 = 1;
const HEADER_LEN: usize = 32;

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

pub(super) fn parse(data: &[u8]) -> Result<(ImageFormat, Vec<Range<'_>>), FormatError> {
    let mut ranges: Vec<Range<'_>> = Vec::new();
    let mut off = 0usize;
    let mut format = ImageFormat::Lime;
    while off < data.len() {
        let Some(h) = data.get(off..off + HEADER_LEN) else {
            return Err(FormatError::Truncated {
                header_offset: off,
                expected: HEADER_LEN as u64,
                found: (data.len() - off) as u64,
            });
        };
        let magic = le_u32(h, 0);
        let version = le_u32(h, 4);
        let start = le_u64(h, 8);
        let end_incl = le_u64(h, 16);
        if magic != LIME_MAGIC && magic != AVML_MAGIC {
            return Err(FormatError::BadHeader {
                offset: off,
                expected: "LiME magic 0x4c694d45 (\"EMiL\")",
                found: format!("{magic:#010x}"),
            });
        }
        if end_incl < start || end_incl == u64::MAX {
            return Err(FormatError::BadHeader {
                offset: off,
                expected: "a range with start <= end",
                found: format!("start {start:#x}, end {end_incl:#x}"),
            });
        }
        if let Some(prev) = ranges.last()
            && start < prev.end
        {
            return Err(FormatError::BadHeader {
                offset: off,
                expected: "ascending, non-overlapping ranges",
                found: format!("range {start:#x} after one ending at {:#x}", prev.end),
            });
        }
        let len = end_incl - start + 1;
        let body = off + HEADER_LEN;
        let rest = (data.len() - body) as u64;
        let backing = match version {
            LIME_VERSION => {
                if len > rest {
                    return Err(FormatError::Truncated {
                        header_offset: off,
                        expected: len,
                        found: rest,
                    });
                }
                let n = usize::try_from(len).map_err(|_| FormatError::Truncated {
                    header_offset: off,
                    expected: len,
                    found: rest,
                })?;
                off = body + n;
                Backing::Plain(data.get(body..body + n).unwrap_or_default())
            }
            AVML_VERSION => {
                format = ImageFormat::AvmlCompressed;
                let (range, consumed) = SnappyRange::index(data, body, start, len)?;
                off = body + consumed;
                Backing::Snappy(range)
            }
            v => {
                return Err(FormatError::BadHeader {
                    offset: off,
                    expected: "LiME version 1 or AVML version 2",
                    found: format!("version {v}"),
                });
            }
        };
        ranges.push(Range {
            start,
            end: end_incl + 1,
            backing,
        });
    }
    Ok((format, ranges))
}

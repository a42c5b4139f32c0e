//! Validates a LiME stream while it arrives.
//!
//! The network cannot be trusted to tell us the image is complete: russh has
//! closed channels early (upstream #553), and MargaritaShotgun treated a quiet
//! socket as the end of the image. So the stream itself is the proof: every
//! range must start with a well-formed header, ranges must ascend without
//! overlap, and the stream may only end exactly at the end of a range.

use crate::target::PhysRange;

// One definition of the format for the whole project: the analyser's.
pub use memimage::format::{LIME_MAGIC, LIME_VERSION};
pub const HEADER_LEN: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimeStreamError {
    #[error("bad LiME header at byte {offset}: magic {found:#010x}, expected {LIME_MAGIC:#010x}")]
    BadMagic { offset: u64, found: u32 },
    #[error("bad LiME header at byte {offset}: version {found}, expected {LIME_VERSION}")]
    BadVersion { offset: u64, found: u32 },
    #[error("bad LiME header at byte {offset}: range end {end:#x} is before start {start:#x}")]
    Reversed { offset: u64, start: u64, end: u64 },
    #[error(
        "bad LiME header at byte {offset}: range {start:#x}-{end:#x} does not follow the previous range ending at {previous_end:#x}"
    )]
    NotAscending {
        offset: u64,
        start: u64,
        end: u64,
        previous_end: u64,
    },
    #[error("bad LiME header at byte {offset}: reserved field is not zero")]
    Reserved { offset: u64 },
    #[error("the stream is empty: LiME sent nothing")]
    Empty,
    #[error("the stream ended inside the header at byte {offset} ({have} of 32 bytes)")]
    TruncatedHeader { offset: u64, have: usize },
    #[error("the stream ended inside range {start:#x}-{end:#x}: {missing} bytes missing")]
    TruncatedRange { start: u64, end: u64, missing: u64 },
}

/// Feed it every byte in order; `finish` says whether the image is whole.
#[derive(Debug, Default)]
pub struct LimeValidator {
    offset: u64,
    header: Vec<u8>,
    /// Bytes still owed to the current range.
    remaining: u64,
    ranges: Vec<PhysRange>,
}

impl LimeValidator {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn bytes_seen(&self) -> u64 {
        self.offset
    }

    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), LimeStreamError> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let take = (self.remaining.min(data.len() as u64)) as usize;
                self.remaining -= take as u64;
                self.offset += take as u64;
                data = &data[take..];
                continue;
            }
            let want = HEADER_LEN - self.header.len();
            let take = want.min(data.len());
            self.header.extend_from_slice(&data[..take]);
            self.offset += take as u64;
            data = &data[take..];
            if self.header.len() == HEADER_LEN {
                self.accept_header()?;
            }
        }
        Ok(())
    }

    fn accept_header(&mut self) -> Result<(), LimeStreamError> {
        let offset = self.offset - HEADER_LEN as u64;
        let h = std::mem::take(&mut self.header);
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let magic = u32_at(0);
        if magic != LIME_MAGIC {
            return Err(LimeStreamError::BadMagic {
                offset,
                found: magic,
            });
        }
        let version = u32_at(4);
        if version != LIME_VERSION {
            return Err(LimeStreamError::BadVersion {
                offset,
                found: version,
            });
        }
        let (start, end) = (u64_at(8), u64_at(16));
        if end < start {
            return Err(LimeStreamError::Reversed { offset, start, end });
        }
        if u64_at(24) != 0 {
            return Err(LimeStreamError::Reserved { offset });
        }
        if let Some(previous) = self.ranges.last()
            && start <= previous.end
        {
            return Err(LimeStreamError::NotAscending {
                offset,
                start,
                end,
                previous_end: previous.end,
            });
        }
        let range = PhysRange { start, end };
        self.remaining = range.bytes();
        self.ranges.push(range);
        Ok(())
    }

    /// The ranges, if the stream ended exactly at the end of one.
    pub fn finish(&self) -> Result<Vec<PhysRange>, LimeStreamError> {
        if self.offset == 0 {
            return Err(LimeStreamError::Empty);
        }
        if !self.header.is_empty() {
            return Err(LimeStreamError::TruncatedHeader {
                offset: self.offset - self.header.len() as u64,
                have: self.header.len(),
            });
        }
        if self.remaining > 0
            && let Some(last) = self.ranges.last()
        {
            return Err(LimeStreamError::TruncatedRange {
                start: last.start,
                end: last.end,
                missing: self.remaining,
            });
        }
        Ok(self.ranges.clone())
    }
}

/// The LiME header of `range` (kcore frames its pieces with it).
pub fn header_bytes(range: PhysRange) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&LIME_MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&LIME_VERSION.to_le_bytes());
    h[8..16].copy_from_slice(&range.start.to_le_bytes());
    h[16..24].copy_from_slice(&range.end.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(ranges: &[(u64, u64)]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(start, end) in ranges {
            out.extend_from_slice(&header_bytes(PhysRange { start, end }));
            out.extend((start..=end).map(|a| (a % 251) as u8));
        }
        out
    }

    #[test]
    fn whole_image_in_any_chunking() {
        let bytes = image(&[(0x1000, 0x1fff), (0x5000, 0x5fff)]);
        for chunk in [1, 7, 31, 32, 33, 4096, 100_000] {
            let mut v = LimeValidator::new();
            for piece in bytes.chunks(chunk) {
                v.feed(piece).unwrap();
            }
            let ranges = v.finish().unwrap();
            assert_eq!(ranges.len(), 2, "chunk {chunk}");
            assert_eq!(
                ranges[1],
                PhysRange {
                    start: 0x5000,
                    end: 0x5fff
                }
            );
            assert_eq!(v.bytes_seen(), bytes.len() as u64);
        }
    }

    #[test]
    fn truncation_anywhere_is_caught() {
        let bytes = image(&[(0x1000, 0x1fff), (0x5000, 0x5fff)]);
        for cut in [1, 31, 32, 33, 4127, 4128 + 16, bytes.len() - 1] {
            let mut v = LimeValidator::new();
            v.feed(&bytes[..cut]).unwrap();
            assert!(v.finish().is_err(), "cut at {cut} accepted");
        }
        let mut v = LimeValidator::new();
        v.feed(&bytes[..bytes.len() - 10]).unwrap();
        assert_eq!(
            v.finish(),
            Err(LimeStreamError::TruncatedRange {
                start: 0x5000,
                end: 0x5fff,
                missing: 10
            })
        );
        assert_eq!(LimeValidator::new().finish(), Err(LimeStreamError::Empty));
    }

    #[test]
    fn malformed_headers_are_rejected() {
        let mut bytes = image(&[(0x1000, 0x1fff)]);
        bytes[0] ^= 0xff;
        assert!(matches!(
            LimeValidator::new().feed(&bytes),
            Err(LimeStreamError::BadMagic { offset: 0, .. })
        ));

        let mut bytes = image(&[(0x1000, 0x1fff)]);
        bytes[4] = 2;
        assert!(matches!(
            LimeValidator::new().feed(&bytes),
            Err(LimeStreamError::BadVersion { found: 2, .. })
        ));

        let overlapping = image(&[(0x1000, 0x1fff), (0x1800, 0x2fff)]);
        assert!(matches!(
            LimeValidator::new().feed(&overlapping),
            Err(LimeStreamError::NotAscending { offset: 4128, .. })
        ));

        let descending = image(&[(0x5000, 0x5fff), (0x1000, 0x1fff)]);
        assert!(LimeValidator::new().feed(&descending).is_err());

        let mut reserved = image(&[(0x1000, 0x1fff)]);
        reserved[30] = 1;
        assert_eq!(
            LimeValidator::new().feed(&reserved),
            Err(LimeStreamError::Reserved { offset: 0 })
        );

        let mut reversed = header_bytes(PhysRange { start: 0, end: 0 }).to_vec();
        reversed[8..16].copy_from_slice(&5u64.to_le_bytes());
        assert!(matches!(
            LimeValidator::new().feed(&reversed),
            Err(LimeStreamError::Reversed { .. })
        ));
    }
}

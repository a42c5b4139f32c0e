//! Physical memory images: LiME (version 1), AVML's snappy-compressed LiME
//! (version 2) and raw/padded images, all behind one [`PhysicalMemory`].
//!
//! Why this layer exists: every later layer (paging, kernel discovery,
//! plugins) wants "give me the bytes at physical address X" and must learn,
//! not guess, when X was never captured. A gap between LiME ranges therefore
//! reads as [`FormatError::Absent`], never as zeros. LiME and raw images are
//! served straight from the caller's byte slice (normally a memory map), so
//! the image is never copied into RAM; AVML ranges are decompressed one
//! 64 KiB snappy chunk at a time on demand.

mod avml;
mod lime;
pub mod write;

use std::cell::RefCell;

pub use avml::{AVML_MAGIC, AVML_VERSION};
pub use lime::{LIME_MAGIC, LIME_VERSION};

/// Errors from parsing or reading a physical memory image.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FormatError {
    #[error("image is empty: expected a LiME, AVML or raw memory image, found 0 bytes")]
    Empty,
    #[error(
        "truncated image: range header at file offset {header_offset:#x} announces {expected} bytes of memory, but only {found} remain in the file"
    )]
    Truncated {
        header_offset: usize,
        expected: u64,
        found: u64,
    },
    #[error("bad LiME header at file offset {offset:#x}: expected {expected}, found {found}")]
    BadHeader {
        offset: usize,
        expected: &'static str,
        found: String,
    },
    #[error("physical address {addr:#x} is absent from the image (not captured)")]
    Absent { addr: u64 },
    #[error(
        "corrupt AVML compressed data in range starting at physical {range_start:#x}: {reason}"
    )]
    Compressed { range_start: u64, reason: String },
}

/// The image formats that [`PhysicalMemory::parse`] recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Lime,
    AvmlCompressed,
    Raw,
}

/// Where the bytes of one physical range come from.
#[derive(Debug)]
enum Backing<'a> {
    /// Uncompressed bytes straight from the image.
    Plain(&'a [u8]),
    /// AVML snappy frames, with an index of chunk boundaries.
    Snappy(avml::SnappyRange<'a>),
}

/// One contiguous captured range of physical memory, `[start, end)`.
#[derive(Debug)]
pub struct Range<'a> {
    pub start: u64,
    pub end: u64,
    backing: Backing<'a>,
}

/// Physical memory made of captured ranges, sorted and non-overlapping.
#[derive(Debug)]
pub struct PhysicalMemory<'a> {
    format: ImageFormat,
    ranges: Vec<Range<'a>>,
    /// Last decompressed AVML chunk: (range index, chunk index, bytes).
    chunk_cache: RefCell<Option<(usize, usize, Vec<u8>)>>,
}

impl<'a> PhysicalMemory<'a> {
    /// Parses an image, detecting its format from the first header.
    ///
    /// Anything that does not start with the LiME magic is a raw image whose
    /// first byte is physical address 0.
    pub fn parse(data: &'a [u8]) -> Result<Self, FormatError> {
        if data.is_empty() {
            return Err(FormatError::Empty);
        }
        let (format, ranges) = if data.starts_with(&LIME_MAGIC.to_le_bytes())
            || data.starts_with(&AVML_MAGIC.to_le_bytes())
        {
            lime::parse(data)?
        } else {
            let end = u64::try_from(data.len()).unwrap_or(u64::MAX);
            (
                ImageFormat::Raw,
                vec![Range {
                    start: 0,
                    end,
                    backing: Backing::Plain(data),
                }],
            )
        };
        Ok(Self {
            format,
            ranges,
            chunk_cache: RefCell::new(None),
        })
    }

    pub fn format(&self) -> ImageFormat {
        self.format
    }

    /// The captured ranges as `(start, end)` pairs, end exclusive.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|r| (r.start, r.end))
    }

    /// Highest captured address plus one.
    pub fn max_address(&self) -> u64 {
        self.ranges.last().map_or(0, |r| r.end)
    }

    fn range_index(&self, addr: u64) -> Option<usize> {
        let idx = self.ranges.partition_point(|r| r.end <= addr);
        match self.ranges.get(idx) {
            Some(r) if r.start <= addr => Some(idx),
            _ => None,
        }
    }

    /// Borrows `len` bytes at `addr` without copying, when they lie in one
    /// uncompressed range.
    pub fn slice(&self, addr: u64, len: usize) -> Option<&'a [u8]> {
        let r = self.ranges.get(self.range_index(addr)?)?;
        let Backing::Plain(bytes) = r.backing else {
            return None;
        };
        let off = usize::try_from(addr - r.start).ok()?;
        bytes.get(off..off.checked_add(len)?)
    }

    /// Fills `buf` from physical `addr`; fails with `Absent` at the first
    /// byte that was not captured.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), FormatError> {
        let mut done = 0usize;
        while done < buf.len() {
            let cur = addr
                .checked_add(done as u64)
                .ok_or(FormatError::Absent { addr: u64::MAX })?;
            let idx = self
                .range_index(cur)
                .ok_or(FormatError::Absent { addr: cur })?;
            let r = self
                .ranges
                .get(idx)
                .ok_or(FormatError::Absent { addr: cur })?;
            let want = buf.len() - done;
            let avail = usize::try_from(r.end - cur).unwrap_or(usize::MAX);
            let n = want.min(avail);
            let dst = buf
                .get_mut(done..done + n)
                .ok_or(FormatError::Absent { addr: cur })?;
            self.read_in_range(idx, r, cur - r.start, dst)?;
            done += n;
        }
        Ok(())
    }

    fn read_in_range(
        &self,
        idx: usize,
        r: &Range<'a>,
        off: u64,
        dst: &mut [u8],
    ) -> Result<(), FormatError> {
        match &r.backing {
            Backing::Plain(bytes) => {
                let off =
                    usize::try_from(off).map_err(|_| FormatError::Absent { addr: r.start })?;
                let src = bytes.get(off..off + dst.len()).ok_or(FormatError::Absent {
                    addr: r.start + off as u64,
                })?;
                dst.copy_from_slice(src);
                Ok(())
            }
            Backing::Snappy(s) => {
                let mut cache = self.chunk_cache.borrow_mut();
                s.read(idx, r.start, off, dst, &mut cache)
            }
        }
    }

    /// Reads a little-endian u64 at physical `addr`.
    pub fn read_u64(&self, addr: u64) -> Result<u64, FormatError> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Calls `f(addr, bytes)` for consecutive pieces of every range; pieces
    /// of one range are contiguous. Stops early when `f` returns false.
    pub fn for_each_piece(&self, mut f: impl FnMut(u64, &[u8]) -> bool) -> Result<(), FormatError> {
        for r in &self.ranges {
            match &r.backing {
                Backing::Plain(bytes) => {
                    if !f(r.start, bytes) {
                        return Ok(());
                    }
                }
                Backing::Snappy(s) => {
                    let mut keep_going = true;
                    s.for_each_chunk(r.start, &mut |a, b| {
                        keep_going = f(a, b);
                        keep_going
                    })?;
                    if !keep_going {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    /// Physical addresses of every occurrence of `needle`, also across piece
    /// boundaries of one range. `limit` caps the number of hits.
    pub fn find_all(&self, needle: &[u8], limit: usize) -> Result<Vec<u64>, FormatError> {
        let mut hits = Vec::new();
        if needle.is_empty() {
            return Ok(hits);
        }
        let finder = memchr::memmem::Finder::new(needle);
        let mut tail: Vec<u8> = Vec::new();
        let mut tail_end = u64::MAX;
        self.for_each_piece(|addr, bytes| {
            if tail_end == addr && !tail.is_empty() {
                let mut joined = tail.clone();
                let extra = bytes.len().min(needle.len() - 1);
                joined.extend_from_slice(bytes.get(..extra).unwrap_or_default());
                let base = addr - tail.len() as u64;
                for p in finder.find_iter(&joined) {
                    if p < tail.len() {
                        hits.push(base + p as u64);
                    }
                }
            }
            for p in finder.find_iter(bytes) {
                hits.push(addr + p as u64);
                if hits.len() >= limit {
                    return false;
                }
            }
            let keep = bytes.len().min(needle.len() - 1);
            tail = bytes.get(bytes.len() - keep..).unwrap_or_default().to_vec();
            tail_end = addr + bytes.len() as u64;
            hits.len() < limit
        })?;
        Ok(hits)
    }
}

#[cfg(test)]
mod tests;

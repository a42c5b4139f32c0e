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
mod source;
pub mod write;

use std::cell::RefCell;

pub use avml::{AVML_MAGIC, AVML_VERSION};
pub use lime::{LIME_MAGIC, LIME_VERSION};
pub use source::{PageSource, SourceStats};

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
    /// A live source failed: the analysis cannot go on as if the page
    /// were merely absent.
    #[error("reading physical {addr:#x} from the live source failed: {reason}")]
    Source { addr: u64, reason: String },
    #[error(
        "this needs a search of all physical memory, which a live source does not offer: analyse a capture for it"
    )]
    NotScannable,
}

impl FormatError {
    /// Whether the error is the source failing rather than a page missing.
    pub fn is_source_failure(&self) -> bool {
        matches!(self, FormatError::Source { .. })
    }
}

/// The image formats that [`PhysicalMemory::parse`] recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Lime,
    AvmlCompressed,
    Raw,
    /// A running machine's memory read on demand ([`PageSource`]).
    Live,
}

/// Where the bytes of one physical range come from.
#[derive(Debug)]
enum Backing<'a> {
    /// Uncompressed bytes straight from the image.
    Plain(&'a [u8]),
    /// AVML snappy frames, with an index of chunk boundaries.
    Snappy(avml::SnappyRange<'a>),
    /// Read on demand through the block cache.
    Source,
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
    /// The live source behind `Backing::Source` ranges.
    source: Option<source::BlockCache<'a>>,
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
            source: None,
        })
    }

    /// Physical memory of `ranges` (`[start, end)`, sorted, not
    /// overlapping) read from `source` on demand in blocks of `block`
    /// bytes, holding at most `cache_bytes` of them.
    pub fn from_source(
        ranges: &[(u64, u64)],
        source: &'a dyn PageSource,
        block: usize,
        cache_bytes: usize,
    ) -> Self {
        let mut sorted: Vec<(u64, u64)> = ranges.iter().copied().filter(|(s, e)| s < e).collect();
        sorted.sort_unstable();
        sorted.dedup_by(|b, a| b.0 < a.1);
        Self {
            format: ImageFormat::Live,
            ranges: sorted
                .into_iter()
                .map(|(start, end)| Range {
                    start,
                    end,
                    backing: Backing::Source,
                })
                .collect(),
            chunk_cache: RefCell::new(None),
            source: Some(source::BlockCache::new(source, block, cache_bytes)),
        }
    }

    /// Requests and bytes read from a live source so far (zero for files).
    pub fn source_stats(&self) -> SourceStats {
        self.source
            .as_ref()
            .map_or_else(SourceStats::default, |s| s.stats())
    }

    /// Like `read`, but a live source is asked again rather than answered
    /// from the cache: code that a check judges is read twice.
    pub fn read_fresh(&self, addr: u64, buf: &mut [u8]) -> Result<(), FormatError> {
        match &self.source {
            Some(cache) => {
                let idx = self.range_index(addr).ok_or(FormatError::Absent { addr })?;
                let r = self.ranges.get(idx).ok_or(FormatError::Absent { addr })?;
                if addr.saturating_add(buf.len() as u64) > r.end {
                    return Err(FormatError::Absent { addr: r.end });
                }
                cache.read_fresh(addr, buf)
            }
            None => self.read(addr, buf),
        }
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
            Backing::Source => match &self.source {
                Some(cache) => cache.read(r.start, r.end, r.start + off, dst),
                None => Err(FormatError::Absent {
                    addr: r.start + off,
                }),
            },
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
                Backing::Source => {
                    return Err(FormatError::NotScannable);
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

//! Physical memory that is not in a file: a running machine's memory, read
//! on demand (mshot reads /proc/kcore over SSH). The core stays
//! synchronous and knows nothing of how the bytes travel: the caller hands
//! in a [`PageSource`], and reads go through a block cache in front of it,
//! so a walk that touches the same pages again costs no second request.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use super::FormatError;

/// Random access to physical memory kept elsewhere.
pub trait PageSource {
    /// Fills `buf` from physical `addr`; the bytes lie in one range that
    /// was given to [`super::PhysicalMemory::from_source`]. An error means
    /// the source failed (a lost connection, a refused read): it ends the
    /// analysis rather than skipping an object.
    fn read_at(&self, addr: u64, buf: &mut [u8]) -> Result<(), String>;
}

/// What was read from the source so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceStats {
    pub requests: u64,
    pub bytes: u64,
}

/// Blocks of `block` bytes (aligned to their size, cut at range ends),
/// the oldest dropped first once `capacity` are held.
pub(super) struct BlockCache<'a> {
    source: &'a dyn PageSource,
    block: u64,
    capacity: usize,
    blocks: RefCell<HashMap<u64, Rc<[u8]>>>,
    order: RefCell<VecDeque<u64>>,
    stats: Cell<SourceStats>,
}

impl std::fmt::Debug for BlockCache<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache")
            .field("block", &self.block)
            .field("stats", &self.stats.get())
            .finish_non_exhaustive()
    }
}

impl<'a> BlockCache<'a> {
    /// `block` is rounded up to a power of two of at least one page.
    pub(super) fn new(source: &'a dyn PageSource, block: usize, capacity_bytes: usize) -> Self {
        let block = (block.max(4096) as u64).next_power_of_two();
        BlockCache {
            source,
            block,
            capacity: (capacity_bytes as u64 / block).max(16) as usize,
            blocks: RefCell::new(HashMap::new()),
            order: RefCell::new(VecDeque::new()),
            stats: Cell::new(SourceStats::default()),
        }
    }

    pub(super) fn stats(&self) -> SourceStats {
        self.stats.get()
    }

    /// Fills `dst` from `addr`, all of it inside the range `[start, end)`.
    pub(super) fn read(
        &self,
        start: u64,
        end: u64,
        addr: u64,
        dst: &mut [u8],
    ) -> Result<(), FormatError> {
        let mut done = 0usize;
        while done < dst.len() {
            let cur = addr + done as u64;
            let key = cur - cur % self.block;
            let block = self.block_at(key, start, end)?;
            let from = (cur - key.max(start)) as usize;
            let n = (dst.len() - done).min(block.len().saturating_sub(from));
            let (Some(src), Some(out)) = (block.get(from..from + n), dst.get_mut(done..done + n))
            else {
                return Err(FormatError::Absent { addr: cur });
            };
            if n == 0 {
                return Err(FormatError::Absent { addr: cur });
            }
            out.copy_from_slice(src);
            done += n;
        }
        Ok(())
    }

    /// Reads `len` bytes at `addr` from the source itself, bypassing the
    /// cache: for code that a check judges, read again to be sure.
    pub(super) fn read_fresh(&self, addr: u64, dst: &mut [u8]) -> Result<(), FormatError> {
        self.fetch(addr, dst)
    }

    fn block_at(&self, key: u64, start: u64, end: u64) -> Result<Rc<[u8]>, FormatError> {
        if let Some(block) = self.blocks.borrow().get(&key) {
            return Ok(block.clone());
        }
        let from = key.max(start);
        let to = (key + self.block).min(end);
        let mut bytes = vec![0u8; (to - from) as usize];
        self.fetch(from, &mut bytes)?;
        let block: Rc<[u8]> = bytes.into();
        let mut blocks = self.blocks.borrow_mut();
        let mut order = self.order.borrow_mut();
        if blocks.len() >= self.capacity
            && let Some(oldest) = order.pop_front()
        {
            blocks.remove(&oldest);
        }
        blocks.insert(key, block.clone());
        order.push_back(key);
        Ok(block)
    }

    fn fetch(&self, addr: u64, dst: &mut [u8]) -> Result<(), FormatError> {
        let mut stats = self.stats.get();
        stats.requests += 1;
        stats.bytes += dst.len() as u64;
        self.stats.set(stats);
        self.source
            .read_at(addr, dst)
            .map_err(|reason| FormatError::Source { addr, reason })
    }
}

//! A virtual address space: a DTB plus physical memory.

use super::{MemoryError, PagingMode, translate};
use crate::format::{FormatError, PhysicalMemory};

/// Reads virtual memory of one address space (the kernel's or a process').
#[derive(Debug, Clone, Copy)]
pub struct VirtualMemory<'p, 'a> {
    pub phys: &'p PhysicalMemory<'a>,
    pub mode: PagingMode,
    pub dtb: u64,
}

impl<'p, 'a> VirtualMemory<'p, 'a> {
    pub fn new(phys: &'p PhysicalMemory<'a>, mode: PagingMode, dtb: u64) -> Self {
        Self { phys, mode, dtb }
    }

    pub fn translate(&self, va: u64) -> Result<u64, MemoryError> {
        translate(self.phys, self.mode, self.dtb, va).map(|t| t.pa)
    }

    /// Fills `buf` from `va`, page by page; fails at the first unmapped or
    /// uncaptured page.
    pub fn read(&self, va: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let mut done = 0usize;
        while done < buf.len() {
            let cur = va.wrapping_add(done as u64);
            let t = translate(self.phys, self.mode, self.dtb, cur)?;
            let in_page = t.page_size - (cur & (t.page_size - 1));
            let n = (buf.len() - done).min(usize::try_from(in_page).unwrap_or(usize::MAX));
            let dst = buf.get_mut(done..done + n).unwrap_or_default();
            self.phys.read(t.pa, dst).map_err(|e| match e {
                FormatError::Absent { .. } => MemoryError::PageAbsent { va: cur, pa: t.pa },
                other => MemoryError::Physical {
                    va: cur,
                    source: other,
                },
            })?;
            done += n;
        }
        Ok(())
    }

    pub fn read_u64(&self, va: u64) -> Result<u64, MemoryError> {
        let mut b = [0u8; 8];
        self.read(va, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Reads an unsigned little-endian integer of 1, 2, 4 or 8 bytes.
    pub fn read_uint(&self, va: u64, size: usize) -> Result<u64, MemoryError> {
        let mut b = [0u8; 8];
        let n = size.min(8);
        self.read(va, b.get_mut(..n).unwrap_or_default())?;
        Ok(u64::from_le_bytes(b))
    }

    /// Reads up to `max` bytes and cuts at the first NUL.
    pub fn read_cstr(&self, va: u64, max: usize) -> Result<Vec<u8>, MemoryError> {
        let mut b = vec![0u8; max];
        self.read(va, &mut b)?;
        if let Some(p) = memchr::memchr(0, &b) {
            b.truncate(p);
        }
        Ok(b)
    }
}

//! Synthetic physical memory and page tables for tests and fuzz seeds.
//!
//! Not part of the stable API (hidden from docs): it lets the unit tests,
//! the integration tests and the fuzz harness build small, exact images
//! without any real capture.

/// A flat physical memory under construction with a bump allocator for
/// page tables.
#[derive(Debug, Clone)]
pub struct SynthMemory {
    pub bytes: Vec<u8>,
    next_table: u64,
    pub five_level: bool,
    pub dtb: u64,
}

impl SynthMemory {
    /// `size` bytes of zeroed memory; page tables are allocated downward
    /// from `table_area` (exclusive top).
    pub fn new(size: usize, table_area: u64, five_level: bool) -> Self {
        let mut m = Self {
            bytes: vec![0; size],
            next_table: table_area,
            five_level,
            dtb: 0,
        };
        m.dtb = m.alloc_table();
        m
    }

    fn alloc_table(&mut self) -> u64 {
        self.next_table -= 0x1000;
        self.next_table
    }

    pub fn write(&mut self, pa: u64, data: &[u8]) {
        let start = pa as usize;
        if let Some(dst) = self.bytes.get_mut(start..start + data.len()) {
            dst.copy_from_slice(data);
        }
    }

    pub fn write_u64(&mut self, pa: u64, v: u64) {
        self.write(pa, &v.to_le_bytes());
    }

    pub fn read_u64(&self, pa: u64) -> u64 {
        let mut b = [0u8; 8];
        if let Some(s) = self.bytes.get(pa as usize..pa as usize + 8) {
            b.copy_from_slice(s);
        }
        u64::from_le_bytes(b)
    }

    /// Maps `va` to `pa` with a page of `page_size` (0x1000, 0x200000 or
    /// 0x40000000), creating intermediate tables as needed.
    pub fn map(&mut self, va: u64, pa: u64, page_size: u64) {
        self.map_in(self.dtb, va, pa, page_size);
    }

    /// A new, empty top-level table (another address space).
    pub fn new_root(&mut self) -> u64 {
        self.alloc_table()
    }

    /// Like [`SynthMemory::map`], in the address space rooted at `root`.
    pub fn map_in(&mut self, root: u64, va: u64, pa: u64, page_size: u64) {
        let shifts: &[u32] = if self.five_level {
            &[48, 39, 30, 21, 12]
        } else {
            &[39, 30, 21, 12]
        };
        let mut table = root;
        for &shift in shifts {
            let slot = table + ((va >> shift) & 0x1ff) * 8;
            if (1u64 << shift) == page_size {
                let large = if shift == 12 { 0 } else { 0x80 };
                self.write_u64(slot, (pa & !(page_size - 1)) | 0x63 | large);
                return;
            }
            let e = self.read_u64(slot);
            table = if e & 1 == 1 {
                e & 0x000f_ffff_ffff_f000
            } else {
                let t = self.alloc_table();
                self.write_u64(slot, t | 0x67);
                t
            };
        }
    }

    /// Maps a contiguous region with 4 KiB pages.
    pub fn map_range(&mut self, va: u64, pa: u64, len: u64) {
        let mut off = 0;
        while off < len {
            self.map(va + off, pa + off, 0x1000);
            off += 0x1000;
        }
    }
}

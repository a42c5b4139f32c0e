//! Synthetic physical memory and page tables for tests and fuzz seeds.
//!
//! Not part of the stable API (hidden from docs): it lets the unit tests,
//! the integration tests and the fuzz harness build small, exact images
//! without any real capture.

use crate::format::PhysicalMemory;
use crate::kernel::Kernel;
use crate::memory::{Aarch64Paging, PagingMode, VirtualMemory};
use crate::profile::Profile;

/// A located kernel over a synthetic image: 4-level paging rooted at
/// `dtb`, symbols at their runtime addresses (no KASLR to find).
pub fn kernel<'p, 'a>(
    phys: &'p PhysicalMemory<'a>,
    profile: &'p Profile,
    dtb: u64,
) -> Kernel<'p, 'a> {
    Kernel {
        phys,
        profile,
        vm: VirtualMemory::new(phys, PagingMode::Level4, dtb),
        aslr_shift: 0,
        image_base: crate::kernel::KERNEL_MAP,
        phys_shift: 0,
        dtb,
        mode: PagingMode::Level4,
        banner: Vec::new(),
        banner_pa: 0,
        vmcoreinfo: None,
        method: "synthetic",
        notes: Default::default(),
    }
}

/// An ISF struct type from `(name, offset, type)` fields.
fn ty(size: u64, fields: &[(&str, u64, serde_json::Value)]) -> serde_json::Value {
    let f: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .map(|(n, o, t)| {
            (
                (*n).to_string(),
                serde_json::json!({"offset": o, "type": t}),
            )
        })
        .collect();
    serde_json::json!({"kind": "struct", "size": size, "fields": f})
}

/// The LP64 base types the synthetic kernels' ISFs use.
fn base_types() -> serde_json::Value {
    let t = |size: u8, signed: bool, kind: &str| serde_json::json!({"size": size, "signed": signed, "kind": kind, "endian": "little"});
    serde_json::json!({
        "char": t(1, true, "char"),
        "unsigned char": t(1, false, "char"),
        "short int": t(2, true, "int"),
        "short unsigned int": t(2, false, "int"),
        "int": t(4, true, "int"),
        "unsigned int": t(4, false, "int"),
        "long unsigned int": t(8, false, "int"),
        "long long int": t(8, true, "int"),
        "pointer": t(8, false, "int"),
    })
}

/// A flat physical memory under construction with a bump allocator for
/// page tables.
#[derive(Debug, Clone)]
pub struct SynthMemory {
    pub bytes: Vec<u8>,
    next_table: u64,
    pub five_level: bool,
    /// AArch64 tables instead of x86-64 ones.
    pub arm: Option<Aarch64Paging>,
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
            arm: None,
            dtb: 0,
        };
        m.dtb = m.alloc_table();
        m
    }

    /// Like [`SynthMemory::new`] with AArch64 tables of `paging`'s geometry.
    pub fn new_aarch64(size: usize, table_area: u64, paging: Aarch64Paging) -> Self {
        let mut m = Self {
            bytes: vec![0; size],
            next_table: table_area,
            five_level: false,
            arm: Some(paging),
            dtb: 0,
        };
        m.dtb = m.alloc_table();
        m
    }

    /// The paging mode these tables are written for.
    pub fn mode(&self) -> PagingMode {
        match (self.arm, self.five_level) {
            (Some(a), _) => PagingMode::Aarch64(a),
            (None, true) => PagingMode::Level5,
            (None, false) => PagingMode::Level4,
        }
    }

    fn alloc_table(&mut self) -> u64 {
        self.next_table -= self.arm.map_or(0x1000, |a| a.granule.page_size());
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
        if let Some(a) = self.arm {
            return self.map_arm(a, root, va, pa, page_size);
        }
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

    /// AArch64: written from the architecture's rules, not from the walker,
    /// so the two check each other. Pages and tables are `0b11`, blocks
    /// `0b01`, with the access flag; output-address bits above 47 go where
    /// LPA2 (bits 9:8) or 64 KiB pages (bits 15:12) put them.
    fn map_arm(&mut self, a: Aarch64Paging, root: u64, va: u64, pa: u64, size: u64) {
        let g = a.granule.shift();
        let per = g - 3;
        let count = (a.va_bits - g).div_ceil(per);
        let encode = |addr: u64| -> u64 {
            match (g, a.va_bits > 48) {
                (16, _) => (addr & 0x0000_ffff_ffff_0000) | ((addr >> 48) & 0xf) << 12,
                (_, true) => (addr & 0x0003_ffff_ffff_f000) | ((addr >> 50) & 3) << 8,
                _ => addr & 0x0000_ffff_ffff_f000,
            }
        };
        const AF: u64 = 1 << 10;
        let mut table = root;
        for level in 0..count {
            let shift = g + (count - 1 - level) * per;
            let bits = if level == 0 { a.va_bits - shift } else { per };
            let slot = table + ((va >> shift) & ((1 << bits) - 1)) * 8;
            if (1u64 << shift) == size {
                let kind = if level + 1 == count { 0b11 } else { 0b01 };
                self.write_u64(slot, encode(pa & !(size - 1)) | AF | kind);
                return;
            }
            let e = self.read_u64(slot);
            table = if e & 3 == 3 {
                match (g, a.va_bits > 48) {
                    (16, _) => (e & 0x0000_ffff_ffff_0000) | ((e >> 12) & 0xf) << 48,
                    (_, true) => (e & 0x0003_ffff_ffff_f000) | ((e >> 8) & 3) << 50,
                    _ => e & 0x0000_ffff_ffff_f000,
                }
            } else {
                let t = self.alloc_table();
                self.write_u64(slot, encode(t) | 0b11);
                t
            };
        }
    }

    /// Sets NX on the x86-64 page that maps `va` (a data page).
    pub fn set_nx(&mut self, va: u64) {
        let shifts: &[u32] = if self.five_level {
            &[48, 39, 30, 21, 12]
        } else {
            &[39, 30, 21, 12]
        };
        let mut table = self.dtb;
        for &shift in shifts {
            let slot = table + ((va >> shift) & 0x1ff) * 8;
            let e = self.read_u64(slot);
            if e & 1 == 0 {
                return;
            }
            if shift == 12 || e & 0x80 != 0 {
                self.write_u64(slot, e | 1 << 63);
                return;
            }
            table = e & 0x000f_ffff_ffff_f000;
        }
    }

    /// Maps a contiguous region with the smallest pages.
    pub fn map_range(&mut self, va: u64, pa: u64, len: u64) {
        let page = self.mode().page_size();
        let mut off = 0;
        while off < len {
            self.map(va + off, pa + off, page);
            off += page;
        }
    }
}

pub mod integrity;

pub mod proc;

//! Page-table walking for x86-64 and AArch64, with each architecture's
//! levels as data (memflow's habit): one loop reads any geometry, and only
//! the decoding of one entry differs between the two.

use super::MemoryError;
use crate::format::PhysicalMemory;

/// How an address space translates: x86-64 with 4 or 5 levels (CR4.LA57),
/// or an AArch64 stage-1 regime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PagingMode {
    Level4,
    Level5,
    Aarch64(Aarch64Paging),
}

/// AArch64 translation granule (page size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granule {
    K4,
    K16,
    K64,
}

impl Granule {
    pub fn from_page_size(size: u64) -> Option<Self> {
        match size {
            0x1000 => Some(Granule::K4),
            0x4000 => Some(Granule::K16),
            0x1_0000 => Some(Granule::K64),
            _ => None,
        }
    }

    pub fn shift(self) -> u32 {
        match self {
            Granule::K4 => 12,
            Granule::K16 => 14,
            Granule::K64 => 16,
        }
    }

    pub fn page_size(self) -> u64 {
        1 << self.shift()
    }
}

/// An AArch64 regime: granule and the virtual-address size it really runs
/// with (64 - TCR_EL1.T1SZ), which can be less than the kernel's `VA_BITS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aarch64Paging {
    pub granule: Granule,
    pub va_bits: u32,
}

impl Aarch64Paging {
    /// 52-bit addresses with 4 or 16 KiB pages need FEAT_LPA2 (TCR_EL1.DS),
    /// which changes where output-address bits 51:50 live.
    pub fn lpa2(self) -> bool {
        self.va_bits > 48 && self.granule != Granule::K64
    }

    /// Whether this geometry exists: 4 KiB pages take 39 to 52 bits, the
    /// larger granules at least two levels' worth.
    pub fn is_valid(self) -> bool {
        let min = match self.granule {
            Granule::K4 => 25,
            Granule::K16 => 36,
            Granule::K64 => 42,
        };
        (min..=52).contains(&self.va_bits)
    }
}

/// One level of a geometry, top first.
#[derive(Debug, Clone, Copy)]
struct Level {
    name: &'static str,
    shift: u32,
    /// Index bits this level takes from the address.
    bits: u32,
    /// An entry here may map a block of `1 << shift` bytes.
    block: bool,
}

const X86_LEVELS: [Level; 5] = [
    x86_level("PML5", 48, false),
    x86_level("PML4", 39, false),
    x86_level("PDPT", 30, true),
    x86_level("PD", 21, true),
    x86_level("PT", 12, false),
];

const fn x86_level(name: &'static str, shift: u32, block: bool) -> Level {
    Level {
        name,
        shift,
        bits: 9,
        block,
    }
}

/// A geometry: up to five levels, top first.
struct Geometry {
    levels: [Level; 5],
    count: usize,
}

impl Geometry {
    fn levels(&self) -> &[Level] {
        self.levels.get(..self.count).unwrap_or_default()
    }
}

const ARM_NAMES: [&str; 5] = ["L-1", "L0", "L1", "L2", "L3"];

/// Bits 51..12 of an x86 entry: the next table or page frame.
const X86_ADDR: u64 = 0x000f_ffff_ffff_f000;
const X86_LARGE: u64 = 1 << 7;
/// In an x86 large-page entry bit 12 is PAT, not an address bit.
const X86_PAT: u64 = 1 << 12;

impl PagingMode {
    fn geometry(self) -> Geometry {
        match self {
            PagingMode::Level4 | PagingMode::Level5 => {
                let skip = usize::from(self == PagingMode::Level4);
                let mut levels = X86_LEVELS;
                levels.rotate_left(skip);
                Geometry {
                    levels,
                    count: 5 - skip,
                }
            }
            PagingMode::Aarch64(a) => {
                let g = a.granule.shift();
                let per = g - 3;
                let count = (a.va_bits.saturating_sub(g)).div_ceil(per).clamp(1, 5) as usize;
                let mut levels = [Level {
                    name: "",
                    shift: 0,
                    bits: 0,
                    block: false,
                }; 5];
                for (i, level) in levels.iter_mut().take(count).enumerate() {
                    let from_bottom = (count - 1 - i) as u32;
                    let shift = g + from_bottom * per;
                    let bits = if i == 0 {
                        a.va_bits.saturating_sub(shift).min(per)
                    } else {
                        per
                    };
                    *level = Level {
                        name: ARM_NAMES
                            .get(4 - from_bottom as usize)
                            .copied()
                            .unwrap_or("L?"),
                        shift,
                        bits,
                        block: arm_block(a, shift),
                    };
                }
                Geometry { levels, count }
            }
        }
    }

    /// How many levels a walk reads.
    pub fn levels(self) -> usize {
        self.geometry().count
    }

    /// One phrase for people: "x86-64, 4 levels", "arm64, 4 KiB pages,
    /// 52-bit addresses (LPA2), 5 levels".
    pub fn describe(self) -> String {
        match self {
            PagingMode::Aarch64(a) => format!(
                "arm64, {} KiB pages, {}-bit addresses{}, {} levels",
                a.granule.page_size() >> 10,
                a.va_bits,
                if a.lpa2() { " (LPA2)" } else { "" },
                self.levels()
            ),
            _ => format!("x86-64, {} levels", self.levels()),
        }
    }

    /// Number of significant virtual-address bits.
    pub fn va_bits(self) -> u32 {
        match self {
            PagingMode::Level4 => 48,
            PagingMode::Level5 => 57,
            PagingMode::Aarch64(a) => a.va_bits,
        }
    }

    /// Bits that select the address; above them, all ones or all zeros.
    /// x86-64 sign-extends its top bit; AArch64 picks TTBR1 or TTBR0 by
    /// the bits above `va_bits` alone, so 0xffff_0000_... is a kernel
    /// address with 48 bits.
    fn selecting_bits(self) -> u32 {
        match self {
            PagingMode::Aarch64(a) => a.va_bits.clamp(1, 63),
            _ => self.va_bits() - 1,
        }
    }

    /// True when the bits above the translated ones all equal.
    pub fn is_canonical(self, va: u64) -> bool {
        let top = (va as i64) >> self.selecting_bits();
        top == 0 || top == -1
    }

    /// The first address of the upper (kernel) half.
    pub fn upper_half(self) -> u64 {
        !0u64 << self.selecting_bits()
    }

    /// Smallest page this mode maps.
    pub fn page_size(self) -> u64 {
        match self {
            PagingMode::Aarch64(a) => a.granule.page_size(),
            _ => 0x1000,
        }
    }

    pub fn is_aarch64(self) -> bool {
        matches!(self, PagingMode::Aarch64(_))
    }

    /// Reads one entry: the next table, a leaf's output address, or nothing.
    fn decode(self, entry: u64, level: &Level, last: bool) -> Entry {
        match self {
            PagingMode::Level4 | PagingMode::Level5 => {
                if entry & 1 == 0 {
                    Entry::Invalid
                } else if last {
                    Entry::Leaf(entry & X86_ADDR)
                } else if level.block && entry & X86_LARGE != 0 {
                    Entry::Leaf(entry & X86_ADDR & !X86_PAT)
                } else {
                    Entry::Table(entry & X86_ADDR)
                }
            }
            PagingMode::Aarch64(a) => {
                let table_bit = entry & 2 != 0;
                let oa = arm_output_address(a, entry);
                match (entry & 1 != 0, last, table_bit) {
                    (false, _, _) => Entry::Invalid,
                    (true, true, true) => Entry::Leaf(oa),
                    (true, true, false) => Entry::Invalid,
                    (true, false, true) => Entry::Table(oa),
                    (true, false, false) if level.block => Entry::Leaf(oa),
                    (true, false, false) => Entry::Invalid,
                }
            }
        }
    }
}

enum Entry {
    Table(u64),
    Leaf(u64),
    Invalid,
}

/// Levels where AArch64 allows block descriptors (2 MiB and 1 GiB with
/// 4 KiB pages, 32 MiB with 16 KiB, 512 MiB with 64 KiB; one level higher
/// with 52-bit output addresses).
fn arm_block(a: Aarch64Paging, shift: u32) -> bool {
    let wide = a.va_bits > 48;
    match a.granule {
        Granule::K4 => shift == 21 || shift == 30 || (wide && shift == 39),
        Granule::K16 => shift == 25 || (wide && shift == 36),
        Granule::K64 => shift == 29 || (wide && shift == 42),
    }
}

/// Output address of a table or page descriptor, page-aligned. With LPA2
/// bits 51:50 sit in descriptor bits 9:8 and bits 49:48 are address bits;
/// with 64 KiB pages bits 51:48 sit in descriptor bits 15:12 (zero when
/// unused, as they are reserved then).
fn arm_output_address(a: Aarch64Paging, entry: u64) -> u64 {
    let g = a.granule.shift();
    let low = !((1u64 << g) - 1);
    match a.granule {
        Granule::K64 => (entry & 0x0000_ffff_ffff_0000) | (((entry >> 12) & 0xf) << 48),
        _ if a.lpa2() => (entry & 0x0003_ffff_ffff_f000 & low) | (((entry >> 8) & 3) << 50),
        _ => entry & 0x0000_ffff_ffff_f000 & low,
    }
}

/// Result of a successful walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    pub pa: u64,
    /// Size of the page or block that maps the address.
    pub page_size: u64,
}

/// Walks the tables rooted at `dtb` (CR3, or a TTBR's table address) for
/// `va`.
pub fn translate(
    phys: &PhysicalMemory<'_>,
    mode: PagingMode,
    dtb: u64,
    va: u64,
) -> Result<Translation, MemoryError> {
    if !mode.is_canonical(va) {
        return Err(MemoryError::NonCanonical { va, mode });
    }
    let geometry = mode.geometry();
    let levels = geometry.levels();
    let mut table = match mode {
        // A 52-bit-built kernel on a 48-bit CPU offsets TTBR1 into its
        // larger top table, so a table address need not be page-aligned.
        PagingMode::Aarch64(_) => dtb & 0x000f_ffff_ffff_fff8,
        _ => dtb & X86_ADDR,
    };
    let mut parent_span = 1u64 << mode.va_bits().min(63);
    for (i, level) in levels.iter().enumerate() {
        let index = (va >> level.shift) & ((1u64 << level.bits) - 1);
        let slot = table.wrapping_add(index * 8);
        let span = 1u64 << level.shift;
        let entry = phys.read_u64(slot).map_err(|source| match source {
            // A live source that failed is not a missing table.
            source if source.is_source_failure() => MemoryError::Physical { va, source },
            _ => MemoryError::TableAbsent {
                va,
                level: level.name,
                table,
                span: parent_span,
            },
        })?;
        let last = i + 1 == levels.len();
        match mode.decode(entry, level, last) {
            Entry::Invalid => {
                return Err(MemoryError::NotPresent {
                    va,
                    level: level.name,
                    entry,
                    span,
                });
            }
            Entry::Leaf(frame) => {
                return Ok(Translation {
                    pa: (frame & !(span - 1)) | (va & (span - 1)),
                    page_size: span,
                });
            }
            Entry::Table(next) => table = next,
        }
        parent_span = span;
    }
    Err(MemoryError::NotPresent {
        va,
        level: "last",
        entry: 0,
        span: mode.page_size(),
    })
}

/// A present leaf mapping met by [`executable_leaves`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaf {
    pub va: u64,
    /// Bytes the leaf maps (a page or a block).
    pub size: u64,
}

/// Present leaves of the tables rooted at `dtb` that overlap `[start, end)`
/// and that the kernel may execute: no NX at any level on x86-64; no PXN on
/// the leaf and no PXNTable above it on AArch64. At most `max` leaves;
/// tables absent from the image are counted in `unread`.
pub fn executable_leaves(
    phys: &PhysicalMemory<'_>,
    mode: PagingMode,
    dtb: u64,
    start: u64,
    end: u64,
    max: usize,
    unread: &mut usize,
) -> Vec<Leaf> {
    let geometry = mode.geometry();
    let levels = geometry.levels();
    let root = match mode {
        PagingMode::Aarch64(_) => dtb & 0x000f_ffff_ffff_fff8,
        _ => dtb & X86_ADDR,
    };
    let mut out = Vec::new();
    // (table, level, first address the table maps, execution barred above)
    // The top table's entries of the upper half carry the bits above
    // va_bits (all ones); the lower half's none.
    let top_base = if start >= mode.upper_half() {
        !0u64 << mode.va_bits().min(63)
    } else {
        0
    };
    let mut stack = vec![(root, 0usize, top_base, false)];
    while let Some((table, depth, base, barred)) = stack.pop() {
        let Some(level) = levels.get(depth) else {
            continue;
        };
        let span = 1u64 << level.shift;
        let last = depth + 1 == levels.len();
        for i in 0..(1u64 << level.bits) {
            let lo = base | (i << level.shift);
            if lo.wrapping_add(span - 1) < start || lo >= end || out.len() >= max {
                continue;
            }
            let Ok(e) = phys.read_u64(table + i * 8) else {
                *unread += 1;
                break;
            };
            let barred = barred || exec_barred(mode, e, last);
            match mode.decode(e, level, last) {
                Entry::Invalid => {}
                Entry::Leaf(_) if !barred => out.push(Leaf { va: lo, size: span }),
                Entry::Leaf(_) => {}
                Entry::Table(next) => stack.push((next, depth + 1, lo, barred)),
            }
        }
    }
    out.sort_unstable_by_key(|l| l.va);
    out
}

/// Whether an entry bars kernel execution of what it maps.
fn exec_barred(mode: PagingMode, entry: u64, last: bool) -> bool {
    match mode {
        PagingMode::Aarch64(_) => {
            let table = !last && entry & 2 != 0;
            // PXNTable (bit 59) in a table descriptor, PXN (bit 53) in a leaf.
            if table {
                entry & (1 << 59) != 0
            } else {
                entry & (1 << 53) != 0
            }
        }
        _ => entry & (1 << 63) != 0,
    }
}

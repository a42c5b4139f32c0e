//! x86-64 page-table walking, with the levels as a table (memflow's habit):
//! one generic loop reads it, so 4- and 5-level paging share every line.

use super::MemoryError;
use crate::format::PhysicalMemory;

/// Number of translation levels in use (CR4.LA57 off or on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PagingMode {
    Level4,
    Level5,
}

struct Level {
    name: &'static str,
    shift: u32,
    /// A PS bit at this level maps a large page of `1 << shift` bytes.
    large: bool,
}

const LEVELS: [Level; 5] = [
    Level {
        name: "PML5",
        shift: 48,
        large: false,
    },
    Level {
        name: "PML4",
        shift: 39,
        large: false,
    },
    Level {
        name: "PDPT",
        shift: 30,
        large: true,
    },
    Level {
        name: "PD",
        shift: 21,
        large: true,
    },
    Level {
        name: "PT",
        shift: 12,
        large: false,
    },
];

/// Bits 51..12 of an entry: the next table or page frame.
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const PRESENT: u64 = 1;
const PAGE_SIZE_BIT: u64 = 1 << 7;
/// In a large-page entry bit 12 is PAT, not an address bit.
const LARGE_PAT: u64 = 1 << 12;

impl PagingMode {
    fn levels(self) -> &'static [Level] {
        match self {
            PagingMode::Level4 => LEVELS.get(1..).unwrap_or_default(),
            PagingMode::Level5 => &LEVELS,
        }
    }

    /// Number of significant virtual-address bits (48 or 57).
    pub fn va_bits(self) -> u32 {
        match self {
            PagingMode::Level4 => 48,
            PagingMode::Level5 => 57,
        }
    }

    /// True when bits 63..va_bits-1 all equal (sign extension).
    pub fn is_canonical(self, va: u64) -> bool {
        let top = (va as i64) >> (self.va_bits() - 1);
        top == 0 || top == -1
    }
}

/// Result of a successful walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    pub pa: u64,
    /// Size of the page that maps the address (4 KiB, 2 MiB or 1 GiB).
    pub page_size: u64,
}

/// Walks the tables rooted at `dtb` (a CR3 value) for `va`.
pub fn translate(
    phys: &PhysicalMemory<'_>,
    mode: PagingMode,
    dtb: u64,
    va: u64,
) -> Result<Translation, MemoryError> {
    if !mode.is_canonical(va) {
        return Err(MemoryError::NonCanonical { va, mode });
    }
    let mut table = dtb & ADDR_MASK;
    for level in mode.levels() {
        let index = (va >> level.shift) & 0x1ff;
        let slot = table + index * 8;
        let entry = phys.read_u64(slot).map_err(|source| match source {
            // A live source that failed is not a missing table.
            source if source.is_source_failure() => MemoryError::Physical { va, source },
            _ => MemoryError::TableAbsent {
                va,
                level: level.name,
                table,
            },
        })?;
        if entry & PRESENT == 0 {
            return Err(MemoryError::NotPresent {
                va,
                level: level.name,
                entry,
            });
        }
        let size = 1u64 << level.shift;
        if level.shift == 12 || (level.large && entry & PAGE_SIZE_BIT != 0) {
            let frame = entry & ADDR_MASK & !LARGE_PAT & !(size - 1);
            let frame = if level.shift == 12 {
                entry & ADDR_MASK
            } else {
                frame
            };
            return Ok(Translation {
                pa: frame | (va & (size - 1)),
                page_size: size,
            });
        }
        table = entry & ADDR_MASK;
    }
    Err(MemoryError::NotPresent {
        va,
        level: "PT",
        entry: 0,
    })
}

//! Virtual memory on top of [`PhysicalMemory`]: x86-64 paging (4 or 5
//! levels, 2 MiB and 1 GiB pages) and AArch64 paging (4, 16 and 64 KiB
//! granules, 39- to 52-bit addresses, LPA2, blocks) described as data,
//! and a [`VirtualMemory`] view that reads through either.
//!
//! Every failure says which virtual address and which paging level failed,
//! because "could not read" without a place is useless when a plugin walks
//! a list of hundreds of kernel objects.

mod paging;
mod virt;

pub use paging::{
    Aarch64Paging, Granule, Leaf, PagingMode, Translation, executable_leaves, translate,
};
pub use virt::VirtualMemory;

use crate::format::FormatError;

/// Errors from translating or reading a virtual address.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum MemoryError {
    #[error("virtual address {va:#x} is not canonical for {mode:?} paging")]
    NonCanonical { va: u64, mode: PagingMode },
    #[error("virtual address {va:#x} is not mapped: {level} entry {entry:#x} is not present")]
    NotPresent {
        va: u64,
        level: &'static str,
        entry: u64,
        /// Bytes the entry would have mapped (a hole this large is unmapped).
        span: u64,
    },
    #[error("virtual address {va:#x}: {level} table at physical {table:#x} is not in the image")]
    TableAbsent {
        va: u64,
        level: &'static str,
        table: u64,
        /// Bytes the missing table would have mapped.
        span: u64,
    },
    #[error("virtual address {va:#x} maps to physical {pa:#x}, which is absent from the image")]
    PageAbsent { va: u64, pa: u64 },
    #[error("read at {va:#x}: {source}")]
    Physical {
        va: u64,
        #[source]
        source: FormatError,
    },
}

#[cfg(test)]
mod tests;

//! A process' memory regions (`vm_area_struct`s): the maple tree
//! (`mm->mm_mt`, 6.1 and later) or the older `mm->mmap`/`vm_next` list,
//! whichever the profile's `mm_struct` has.
//!
//! Maple tree encoding (include/linux/maple_tree.h): an entry that points
//! to a node keeps the node type in bits 3..6 and flags in the low byte;
//! every node's first word is its parent (the tree itself for the root),
//! which we check, as Volatility does, to refuse garbage nodes.

use super::tasks::MAX_LIST;
use super::util::{array_field, ptr, soft, uint};
use crate::kernel::{Kernel, KernelError};
use std::collections::HashSet;

const NODE_MASK: u64 = 0xff;
const TYPE_SHIFT: u64 = 3;
const TYPE_MASK: u64 = 0xf;
const MAPLE_DENSE: u64 = 0;
const MAPLE_LEAF_64: u64 = 1;
const MAPLE_RANGE_64: u64 = 2;
const MAPLE_ARANGE_64: u64 = 3;
/// Trees of VMAs are a few levels deep; 31 would be more than 2^64 ranges.
const MAX_DEPTH: u32 = 31;

/// One memory region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Vma {
    pub va: u64,
    pub start: u64,
    pub end: u64,
    pub flags: u64,
    /// In pages (`vm_pgoff`).
    pub pgoff: u64,
    /// `struct file *`, 0 for anonymous memory.
    pub file: u64,
}

impl Vma {
    /// "rwx" from VM_READ/VM_WRITE/VM_EXEC.
    pub fn perms(&self) -> String {
        let b = |bit: u64, c: char| if self.flags & bit != 0 { c } else { '-' };
        [b(1, 'r'), b(2, 'w'), b(4, 'x')].iter().collect()
    }
}

/// Where the slots of each maple node type are: (offset in the node, count).
struct MapleLayout {
    dense: (u64, u64),
    range64: (u64, u64),
    arange64: (u64, u64),
}

impl MapleLayout {
    fn new(k: &Kernel<'_, '_>) -> Result<Self, KernelError> {
        let p = k.profile;
        let mr64 = p.offset("maple_node", "mr64")?;
        let ma64 = p.offset("maple_node", "ma64")?;
        let (r_off, r_cnt) = array_field(k, "maple_range_64", "slot")?;
        let (a_off, a_cnt) = array_field(k, "maple_arange_64", "slot")?;
        Ok(Self {
            dense: array_field(k, "maple_node", "slot")?,
            range64: (mr64 + r_off, r_cnt),
            arange64: (ma64 + a_off, a_cnt),
        })
    }
}

/// Non-empty leaf slots of the maple tree at `tree` (a `struct maple_tree`).
pub(crate) fn maple_entries(k: &Kernel<'_, '_>, tree: u64) -> Result<Vec<u64>, KernelError> {
    let layout = MapleLayout::new(k)?;
    let root = ptr(k, tree, "maple_tree", "ma_root")?;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    // (entry, expected parent, depth)
    let mut stack = vec![(root, tree & !NODE_MASK, 1u32)];
    while let Some((entry, parent, depth)) = stack.pop() {
        if depth > MAX_DEPTH || !seen.insert(entry) || out.len() >= MAX_LIST {
            continue;
        }
        let node = entry & !NODE_MASK;
        let Some(first) = soft(k.read_u64(node, || format!("maple node {node:#x}")))? else {
            continue;
        };
        if first & !NODE_MASK != parent {
            continue;
        }
        let (slots, inner) = match (entry >> TYPE_SHIFT) & TYPE_MASK {
            MAPLE_DENSE => (layout.dense, false),
            MAPLE_LEAF_64 => (layout.range64, false),
            MAPLE_RANGE_64 => (layout.range64, true),
            MAPLE_ARANGE_64 => (layout.arange64, true),
            _ => continue,
        };
        let mut buf = vec![0u8; usize::try_from(slots.1 * 8).unwrap_or(0)];
        if soft(k.read(node.wrapping_add(slots.0), &mut buf, || {
            format!("maple node {node:#x} slots")
        }))?
        .is_none()
        {
            continue;
        }
        let values: Vec<u64> = buf
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                u64::from_le_bytes(b)
            })
            .filter(|s| s & !TYPE_MASK != 0)
            .collect();
        if inner {
            // Reversed so that the stack pops children in address order.
            stack.extend(values.iter().rev().map(|&s| (s, node, depth + 1)));
        } else {
            out.extend(values);
        }
    }
    Ok(out)
}

fn read_vma(k: &Kernel<'_, '_>, va: u64) -> Result<Option<Vma>, KernelError> {
    let st = "vm_area_struct";
    let (Some(start), Some(end), Some(flags), Some(pgoff), Some(file)) = (
        soft(uint(k, va, st, "vm_start"))?,
        soft(uint(k, va, st, "vm_end"))?,
        soft(uint(k, va, st, "vm_flags"))?,
        soft(uint(k, va, st, "vm_pgoff"))?,
        soft(ptr(k, va, st, "vm_file"))?,
    ) else {
        return Ok(None);
    };
    // Volatility's vm_area_struct.is_valid(): reject smeared entries.
    let len = end.wrapping_sub(start);
    if start > end || (start == 0 && len == 0) || len % 0x1000 != 0 {
        return Ok(None);
    }
    if file != 0 {
        let Some(inode) = soft(ptr(k, file, "file", "f_inode"))? else {
            return Ok(None);
        };
        let Some(size) = soft(k.read_int(inode, "inode", "i_size"))? else {
            return Ok(None);
        };
        if size > 0 && i128::from(pgoff) << 12 > size {
            return Ok(None);
        }
    }
    Ok(Some(Vma {
        va,
        start,
        end,
        flags,
        pgoff,
        file,
    }))
}

/// The VMAs of the `mm_struct` at `mm`, in address order.
pub(crate) fn vmas(k: &Kernel<'_, '_>, mm: u64) -> Result<Vec<Vma>, KernelError> {
    let p = k.profile;
    let addrs = if p.has_field("mm_struct", "mmap") {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut cur = soft(ptr(k, mm, "mm_struct", "mmap"))?.unwrap_or(0);
        while cur != 0 && seen.insert(cur) && out.len() < MAX_LIST {
            out.push(cur);
            match soft(ptr(k, cur, "vm_area_struct", "vm_next"))? {
                Some(next) => cur = next,
                None => break,
            }
        }
        out
    } else {
        let tree = mm.wrapping_add(p.offset("mm_struct", "mm_mt")?);
        match soft(maple_entries(k, tree))? {
            Some(v) => v.into_iter().filter(|&a| a >= 0x1000).collect(),
            None => Vec::new(),
        }
    };
    let mut out = Vec::with_capacity(addrs.len());
    for a in addrs {
        if let Some(v) = read_vma(k, a)? {
            out.push(v);
        }
    }
    Ok(out)
}

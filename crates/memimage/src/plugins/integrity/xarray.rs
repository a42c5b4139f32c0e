//! A bounded walk of an xarray (what an IDR is built on: the PID table,
//! `prog_idr`, `link_idr`): every stored pointer with its index.
//!
//! `xa_head` is either the only entry (index 0) or an internal entry
//! `node | 2` naming an `xa_node`, whose `slots` hold entries or further
//! nodes, each slot `i` covering indices `i << shift` on from its node's
//! base. Internal entries of 4096 and below are retry, zero and sibling
//! markers; entries with bit 0 set are values, which IDRs do not store.

use crate::kernel::{Kernel, KernelError};
use crate::plugins::util::array_field;
use std::collections::HashSet;

/// Nodes and entries a walk visits at most; more is a loop or garbage.
const MAX_NODES: usize = 1 << 16;
const MAX_ENTRIES: usize = 1 << 20;
/// Indices are at most 64 bits: a deeper shift is not a node.
const MAX_SHIFT: u64 = 63;

/// `(index, pointer)` of every entry of the xarray whose `xa_head` is at
/// `head_at`. An unreadable node is an error naming `what`.
pub(crate) fn entries(
    k: &Kernel<'_, '_>,
    head_at: u64,
    what: &str,
) -> Result<Vec<(u64, u64)>, KernelError> {
    let head = k.read_u64(head_at, || format!("{what}: xa_head"))?;
    let (slots_off, nslots) = array_field(k, "xa_node", "slots")?;
    let nslots = nslots.clamp(1, 256);
    let shift_off = k.profile.offset("xa_node", "shift")?;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![(head, 0u64)];
    while let Some((entry, base)) = stack.pop() {
        if entry == 0 || out.len() >= MAX_ENTRIES {
            continue;
        }
        match entry & 3 {
            0 => out.push((base, entry)),
            2 if entry > 4096 => {
                let node = entry - 2;
                if !seen.insert(node) || seen.len() > MAX_NODES {
                    continue;
                }
                let mut shift = [0u8; 1];
                k.read(node.wrapping_add(shift_off), &mut shift, || {
                    format!("{what}: node {node:#x}")
                })?;
                let shift = u64::from(shift[0]);
                let mut slots = vec![0u8; usize::try_from(nslots * 8).unwrap_or(0)];
                k.read(node.wrapping_add(slots_off), &mut slots, || {
                    format!("{what}: node {node:#x}")
                })?;
                for (i, s) in slots.chunks_exact(8).enumerate() {
                    let child = u64::from_le_bytes(s.try_into().unwrap_or([0; 8]));
                    let index = if shift <= MAX_SHIFT {
                        base | (i as u64).checked_shl(shift as u32).unwrap_or(0)
                    } else {
                        base
                    };
                    stack.push((child, index));
                }
            }
            _ => {}
        }
    }
    out.sort_unstable();
    Ok(out)
}

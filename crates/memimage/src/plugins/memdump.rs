//! memdump: the contents of every memory region of a process. The core
//! only plans ([`dump_regions`]) and streams bytes ([`read_region`]); the
//! caller decides where they go (the CLI writes one file per region and a
//! JSON index), so this crate still does no I/O.
//!
//! Unmapped or uncaptured pages come back as [`Chunk::Hole`]s (the caller
//! zero-fills them) and are listed, so a dump never silently pretends to
//! hold bytes it does not. A missing upper-level table skips its whole
//! span at once, which keeps sparse regions (guard gaps, reservations)
//! cheap.

use super::maps::regions;
use super::tasks::{processes, read_task};
use super::util::process_vm;
use super::{PluginError, Row, Value};
use crate::kernel::{Kernel, KernelError};
use crate::memory::{MemoryError, PagingMode, translate};

/// Bytes handed to the caller at a time, at most.
const CHUNK: usize = 1 << 20;

/// One region to dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpRegion {
    pub pid: i64,
    pub comm: String,
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub path: String,
    /// Page-table root of the process (physical).
    pub dtb: u64,
}

impl DumpRegion {
    /// Volatility's file name for the region: `pid.N.vma.0xSTART-0xEND.dmp`.
    pub fn file_name(&self) -> String {
        format!("pid.{}.vma.{:#x}-{:#x}.dmp", self.pid, self.start, self.end)
    }

    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A piece of a region, in address order.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk<'b> {
    Data(&'b [u8]),
    /// This many bytes are not in memory (unmapped or not captured).
    Hole(u64),
}

/// The regions of the processes in `pids` (all processes when empty).
pub fn dump_regions(k: &Kernel<'_, '_>, pids: &[i64]) -> Result<Vec<DumpRegion>, PluginError> {
    plan(k, pids).map_err(|cause| PluginError::Kernel {
        plugin: "memdump",
        cause,
    })
}

fn plan(k: &Kernel<'_, '_>, pids: &[i64]) -> Result<Vec<DumpRegion>, KernelError> {
    let mut out = Vec::new();
    for va in processes(k)? {
        let t = read_task(k, va)?;
        if t.mm == 0 || (!pids.is_empty() && !pids.contains(&t.tgid)) {
            continue;
        }
        let Some(vm) = process_vm(k, t.mm)? else {
            continue;
        };
        for r in regions(k, &t)? {
            out.push(DumpRegion {
                pid: t.tgid,
                comm: t.comm.clone(),
                start: r.vma.start,
                end: r.vma.end,
                perms: r.perms,
                path: r.path,
                dtb: vm.dtb,
            });
        }
    }
    Ok(out)
}

/// Where a hole that starts at `va` ends: after everything the failed
/// entry would have mapped, or at the canonical upper half for addresses
/// no table can map.
fn hole_end(e: &MemoryError, va: u64, mode: PagingMode) -> u64 {
    if let MemoryError::NonCanonical { .. } = e {
        let upper = mode.upper_half();
        return if va < upper { upper } else { u64::MAX };
    }
    let span = hole_span(e);
    ((va / span) + 1).saturating_mul(span)
}

/// Bytes covered by the entry (or missing table) that failed, so a hole
/// can skip everything it would have mapped.
fn hole_span(e: &MemoryError) -> u64 {
    match e {
        MemoryError::NotPresent { span, .. } | MemoryError::TableAbsent { span, .. } => {
            (*span).max(0x1000)
        }
        _ => 0x1000,
    }
}

/// Calls `f(va, bytes)` for each mapped and captured piece of
/// `[start, end)` in the address space rooted at `dtb` (pieces never cross
/// a page), skipping unmapped spans a whole table entry at a time; stops
/// after `max_bytes` bytes were delivered. Bounded for any `start..end`.
pub(crate) fn for_each_mapped(
    k: &Kernel<'_, '_>,
    dtb: u64,
    start: u64,
    end: u64,
    max_bytes: u64,
    mut f: impl FnMut(u64, &[u8]),
) {
    let mut va = start;
    let mut done = 0u64;
    let mut page = vec![0u8; 0x1000];
    while va < end && done < max_bytes {
        match translate(k.phys, k.mode, dtb, va) {
            Ok(t) => {
                let n = (0x1000 - (va & 0xfff)).min(end - va);
                let buf = page
                    .get_mut(..usize::try_from(n).unwrap_or(0))
                    .unwrap_or_default();
                if k.phys.read(t.pa, buf).is_ok() {
                    f(va, buf);
                    done += n;
                }
                va += n;
            }
            Err(e) => va = hole_end(&e, va, k.mode),
        }
    }
}

/// Streams the region to `f`; returns the holes as `(start, end)` address
/// ranges (merged). Errors come only from `f`.
pub fn read_region<E>(
    k: &Kernel<'_, '_>,
    r: &DumpRegion,
    mut f: impl FnMut(Chunk<'_>) -> Result<(), E>,
) -> Result<Vec<(u64, u64)>, E> {
    let mut holes: Vec<(u64, u64)> = Vec::new();
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK);
    let mut va = r.start;
    while va < r.end {
        match translate(k.phys, k.mode, r.dtb, va) {
            Ok(t) => {
                let in_page = t.page_size - (va & (t.page_size - 1));
                let n = in_page.min(r.end - va).min(CHUNK as u64);
                let at = buf.len();
                buf.resize(at + usize::try_from(n).unwrap_or(0), 0);
                let dst = buf.get_mut(at..).unwrap_or_default();
                if k.phys.read(t.pa, dst).is_err() {
                    buf.truncate(at);
                    flush(&mut buf, &mut f)?;
                    add_hole(&mut holes, &mut f, va, va + n)?;
                } else if buf.len() >= CHUNK {
                    flush(&mut buf, &mut f)?;
                }
                va += n;
            }
            Err(e) => {
                flush(&mut buf, &mut f)?;
                let next = hole_end(&e, va, k.mode).min(r.end);
                add_hole(&mut holes, &mut f, va, next)?;
                va = next;
            }
        }
    }
    flush(&mut buf, &mut f)?;
    Ok(holes)
}

fn flush<E>(buf: &mut Vec<u8>, f: &mut impl FnMut(Chunk<'_>) -> Result<(), E>) -> Result<(), E> {
    if !buf.is_empty() {
        f(Chunk::Data(buf))?;
        buf.clear();
    }
    Ok(())
}

fn add_hole<E>(
    holes: &mut Vec<(u64, u64)>,
    f: &mut impl FnMut(Chunk<'_>) -> Result<(), E>,
    start: u64,
    end: u64,
) -> Result<(), E> {
    f(Chunk::Hole(end - start))?;
    match holes.last_mut() {
        Some(last) if last.1 == start => last.1 = end,
        _ => holes.push((start, end)),
    }
    Ok(())
}

/// The plan as rows (what `memdump` prints when nothing is written).
pub(crate) fn run(k: &Kernel<'_, '_>) -> Result<Vec<Row>, KernelError> {
    Ok(plan(k, &[])?.iter().map(region_row).collect())
}

pub fn region_row(r: &DumpRegion) -> Row {
    Row {
        fields: vec![
            ("pid", Value::Int(r.pid)),
            ("comm", Value::Str(r.comm.clone())),
            ("start", Value::UInt(r.start)),
            ("end", Value::UInt(r.end)),
            ("perms", Value::Str(r.perms.clone())),
            ("path", Value::Str(r.path.clone())),
            ("file", Value::Str(r.file_name())),
        ],
    }
}

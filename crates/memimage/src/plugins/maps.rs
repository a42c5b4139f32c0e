//! maps: each process' memory regions, like /proc/PID/maps and
//! Volatility's `linux.proc.Maps`: start, end, permissions, file offset,
//! device, inode and the path, or `[heap]`, `[stack]`, `[vdso]` (empty for
//! other anonymous memory).

use super::tasks::{Task, processes, read_task};
use super::util::{ptr, soft, uint};
use super::vfs::{Root, file_inode, file_path, task_root};
use super::vma::{Vma, vmas};
use super::{Row, Value};
use crate::kernel::{Kernel, KernelError};

/// What names anonymous regions: the heap, stack and vDSO bounds.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MmBounds {
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub vdso: Option<u64>,
}

pub(crate) fn mm_bounds(k: &Kernel<'_, '_>, mm: u64) -> Result<MmBounds, KernelError> {
    let p = k.profile;
    let r = |f: &str| -> Result<u64, KernelError> {
        Ok(soft(uint(k, mm, "mm_struct", f))?.unwrap_or(0))
    };
    let vdso = if p.has_field("mm_struct", "context") && p.has_field("mm_context_t", "vdso") {
        let ctx = mm.wrapping_add(p.offset("mm_struct", "context")?);
        soft(ptr(k, ctx, "mm_context_t", "vdso"))?
    } else {
        None
    };
    Ok(MmBounds {
        start_brk: r("start_brk")?,
        brk: r("brk")?,
        start_stack: r("start_stack")?,
        vdso,
    })
}

/// The name of a region: its file's path or a bracketed pseudo name.
pub(crate) fn vma_name(
    k: &Kernel<'_, '_>,
    root: Option<Root>,
    b: &MmBounds,
    v: &Vma,
) -> Result<String, KernelError> {
    Ok(if v.file != 0 {
        file_path(k, root, v.file)?
    } else if v.start <= b.start_brk && v.end >= b.brk {
        "[heap]".into()
    } else if v.start <= b.start_stack && b.start_stack <= v.end {
        "[stack]".into()
    } else if b.vdso == Some(v.start) {
        "[vdso]".into()
    } else {
        String::new()
    })
}

/// One region with everything the maps and memdump rows show.
#[derive(Debug, Clone)]
pub(crate) struct Region {
    pub vma: Vma,
    pub perms: String,
    pub pgoff: u64,
    pub major: u64,
    pub minor: u64,
    pub inode: u64,
    pub path: String,
}

/// The regions of one process (empty for kernel threads).
pub(crate) fn regions(k: &Kernel<'_, '_>, t: &Task) -> Result<Vec<Region>, KernelError> {
    if t.mm == 0 {
        return Ok(Vec::new());
    }
    let root = task_root(k, t.va)?;
    let bounds = mm_bounds(k, t.mm)?;
    let mut out = Vec::new();
    for v in vmas(k, t.mm)? {
        let (inode, major, minor) = if v.file != 0 {
            file_inode(k, v.file)?
        } else {
            (0, 0, 0)
        };
        out.push(Region {
            perms: v.perms(),
            pgoff: if v.file != 0 { v.pgoff << 12 } else { 0 },
            major,
            minor,
            inode,
            path: vma_name(k, root, &bounds, &v)?,
            vma: v,
        });
    }
    Ok(out)
}

pub(crate) fn run(k: &Kernel<'_, '_>) -> Result<Vec<Row>, KernelError> {
    let mut rows = Vec::new();
    for va in processes(k)? {
        let t = read_task(k, va)?;
        for r in regions(k, &t)? {
            rows.push(Row {
                fields: vec![
                    ("pid", Value::Int(t.tgid)),
                    ("comm", Value::Str(t.comm.clone())),
                    ("start", Value::UInt(r.vma.start)),
                    ("end", Value::UInt(r.vma.end)),
                    ("perms", Value::Str(r.perms)),
                    ("pgoff", Value::UInt(r.pgoff)),
                    ("major", Value::UInt(r.major)),
                    ("minor", Value::UInt(r.minor)),
                    ("inode", Value::UInt(r.inode)),
                    ("path", Value::Str(r.path)),
                ],
            });
        }
    }
    Ok(rows)
}

//! psaux: command lines, read from each process' own address space
//! (`mm->arg_start..arg_end` through `mm->pgd`). Kernel threads (no mm)
//! print as `[comm]`; an unreadable command line is `Null`, not "".

use super::tasks::{processes, read_task};
use super::{Row, Value};
use crate::kernel::{Kernel, KernelError};
use crate::memory::VirtualMemory;

const MAX_ARGS: u64 = 4096;

fn args(k: &Kernel<'_, '_>, mm: u64) -> Result<Option<String>, KernelError> {
    let p = k.profile;
    let pgd = k.read_u64(mm.wrapping_add(p.offset("mm_struct", "pgd")?), || {
        format!("mm {mm:#x} pgd")
    })?;
    let start = k.read_u64(mm.wrapping_add(p.offset("mm_struct", "arg_start")?), || {
        format!("mm {mm:#x} arg_start")
    })?;
    let end = k.read_u64(mm.wrapping_add(p.offset("mm_struct", "arg_end")?), || {
        format!("mm {mm:#x} arg_end")
    })?;
    let Ok(dtb) = k.vm.translate(pgd) else {
        return Ok(None);
    };
    let len = end.saturating_sub(start).min(MAX_ARGS);
    if len == 0 {
        return Ok(Some(String::new()));
    }
    let proc_vm = VirtualMemory::new(k.phys, k.mode, dtb);
    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
    if proc_vm.read(start, &mut buf).is_err() {
        return Ok(None);
    }
    let mut parts: Vec<&[u8]> = buf.split(|&b| b == 0).collect();
    while parts.last().is_some_and(|p| p.is_empty()) {
        parts.pop();
    }
    let joined = parts.join(&b' ');
    Ok(Some(String::from_utf8_lossy(&joined).into_owned()))
}

pub(crate) fn run(k: &Kernel<'_, '_>) -> Result<Vec<Row>, KernelError> {
    let mut rows = Vec::new();
    for va in processes(k)? {
        let t = read_task(k, va)?;
        let a = if t.mm == 0 {
            Value::Str(format!("[{}]", t.comm))
        } else {
            args(k, t.mm)?.map_or(Value::Null, Value::Str)
        };
        rows.push(Row {
            fields: vec![
                ("pid", Value::Int(t.tgid)),
                ("ppid", Value::Int(t.ppid)),
                ("comm", Value::Str(t.comm)),
                ("args", a),
            ],
        });
    }
    Ok(rows)
}

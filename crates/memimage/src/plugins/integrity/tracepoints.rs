//! tracepoints: every probe attached to a kernel or module tracepoint.
//!
//! A tracepoint calls each `struct tracepoint_func` of its `funcs` array
//! (ended by a NULL `func`) whenever the event fires: a rootkit that
//! registers a probe on `sys_enter` or `sched_process_exec` sees (and may
//! change) every system call or program start without patching code. The
//! kernel's tracepoints are the `__start___tracepoints_ptrs` ..
//! `__stop___tracepoints_ptrs` array; a module's are its `tracepoints_ptrs`.
//! With `CONFIG_HAVE_ARCH_PREL32_RELOCATIONS` (x86-64 and arm64 since
//! 4.19) each entry is a 32-bit offset from its own address, else a
//! pointer.

use super::{Context, Finding, Owner, Report, Severity};
use crate::kernel::{Kernel, KernelError};
use crate::plugins::util::{kernel_cstr, lossy, ptr, uint};
use crate::plugins::{Row, Value};
use crate::profile::TypeRef;
use std::collections::HashSet;

/// More is not a tracepoint table (6.12 has about 1,900 tracepoints).
const MAX_TRACEPOINTS: u64 = 1 << 16;
/// Probes on one tracepoint; more is a corrupt array.
const MAX_PROBES: u64 = 1024;
const NAME_MAX: usize = 128;

/// How the entries of a tracepoint table hold their tracepoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entries {
    /// `int`: the tracepoint's address minus the entry's own.
    Relative,
    /// `struct tracepoint *`.
    Absolute,
}

impl Entries {
    fn size(self) -> u64 {
        match self {
            Entries::Relative => 4,
            Entries::Absolute => 8,
        }
    }

    /// The tracepoint the entry at `at` names.
    fn read(self, k: &Kernel<'_, '_>, at: u64) -> Result<u64, KernelError> {
        let what = || format!("tracepoint table entry at {at:#x}");
        match self {
            Entries::Relative => {
                let mut b = [0u8; 4];
                k.read(at, &mut b, what)?;
                Ok(at.wrapping_add_signed(i64::from(i32::from_le_bytes(b))))
            }
            Entries::Absolute => k.read_u64(at, what),
        }
    }
}

/// The entry form: from the type of `__start___tracepoints_ptrs` (an ISF
/// made from DWARF says `int[]` or pointers), else from the type of
/// `module.tracepoints_ptrs` (`tracepoint_ptr_t *`, which BTF keeps), else
/// from the first entry, read both ways.
pub(crate) fn entry_form(k: &Kernel<'_, '_>, start: u64, stop: u64) -> Entries {
    let from_type = |t: &TypeRef| match t {
        TypeRef::Base(n) if n == "int" => Some(Entries::Relative),
        TypeRef::Pointer(_) => Some(Entries::Absolute),
        _ => None,
    };
    let declared = k
        .profile
        .symbols
        .get("__start___tracepoints_ptrs")
        .and_then(|s| match &s.ty {
            Some(TypeRef::Array { elem, .. }) => from_type(elem),
            _ => None,
        })
        .or_else(|| match k.profile.field("module", "tracepoints_ptrs") {
            Ok(f) => match &f.ty {
                TypeRef::Pointer(t) => from_type(t),
                _ => None,
            },
            Err(_) => None,
        });
    declared.unwrap_or_else(|| guess_form(k, start, stop))
}

/// The entry form from the table itself: an odd number of 4-byte entries
/// is relative; else the first entry read as a pointer must reach a named
/// tracepoint where read as an offset it does not.
pub(crate) fn guess_form(k: &Kernel<'_, '_>, start: u64, stop: u64) -> Entries {
    if !stop.wrapping_sub(start).is_multiple_of(8) {
        return Entries::Relative;
    }
    let names_a_tracepoint = |e: Entries| {
        e.read(k, start)
            .is_ok_and(|tp| matches!(tracepoint_name(k, tp), Ok(Some(_))))
    };
    if names_a_tracepoint(Entries::Absolute) && !names_a_tracepoint(Entries::Relative) {
        Entries::Absolute
    } else {
        Entries::Relative
    }
}

/// A tracepoint's name; `None` when it is not printable, as every
/// `TRACE_EVENT` name is.
fn tracepoint_name(k: &Kernel<'_, '_>, tp: u64) -> Result<Option<String>, KernelError> {
    let at = ptr(k, tp, "tracepoint", "name")?;
    let raw = kernel_cstr(k, at, NAME_MAX)?;
    Ok((!raw.is_empty() && raw.iter().all(u8::is_ascii_graphic)).then(|| lossy(&raw)))
}

/// One attached probe.
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    pub tracepoint: String,
    pub tp_addr: u64,
    /// Where the tracepoint is defined: `kernel` or a module's name.
    pub defined_in: String,
    pub func: u64,
    pub data: u64,
    pub prio: Option<i64>,
}

/// The probes of the tracepoint at `tp`.
fn probes_of(
    k: &Kernel<'_, '_>,
    tp: u64,
    defined_in: &str,
    out: &mut Vec<Probe>,
) -> Result<(), KernelError> {
    let funcs = ptr(k, tp, "tracepoint", "funcs")?;
    if funcs == 0 {
        return Ok(());
    }
    let name = tracepoint_name(k, tp)?.unwrap_or_else(|| format!("(unnamed at {tp:#x})"));
    let p = k.profile;
    let size = p.struct_def("tracepoint_func")?.size.max(16);
    let func_off = p.offset("tracepoint_func", "func")?;
    let data_off = p.offset("tracepoint_func", "data")?;
    for i in 0..MAX_PROBES {
        let at = funcs.wrapping_add(i * size);
        let func = k.read_u64(at.wrapping_add(func_off), || {
            format!("tracepoint {name} probe {i}")
        })?;
        if func == 0 {
            break;
        }
        let data = k.read_u64(at.wrapping_add(data_off), || {
            format!("tracepoint {name} probe {i} data")
        })?;
        let prio = if p.has_field("tracepoint_func", "prio") {
            let v = k.read_int(at, "tracepoint_func", "prio")?;
            i64::try_from(v).ok()
        } else {
            None
        };
        out.push(Probe {
            tracepoint: name.clone(),
            tp_addr: tp,
            defined_in: defined_in.to_string(),
            func,
            data,
            prio,
        });
    }
    Ok(())
}

/// Every probe on every tracepoint of the kernel and of every module the
/// inventory knows (hidden ones included); tracepoints that could not be
/// read, each with the reason, go to `unread`.
pub(crate) fn probes(
    k: &Kernel<'_, '_>,
    cx: &Context<'_>,
    unread: &mut Vec<String>,
) -> Result<(Vec<Probe>, usize), KernelError> {
    let start = k.symbol("__start___tracepoints_ptrs")?;
    let stop = k.symbol("__stop___tracepoints_ptrs")?;
    let form = entry_form(k, start, stop);
    let count = stop.saturating_sub(start) / form.size();
    if count > MAX_TRACEPOINTS {
        unread.push(format!(
            "the kernel's tracepoint table: {count} entries is not believable"
        ));
        return Ok((Vec::new(), 0));
    }
    let mut tables: Vec<(String, u64, u64)> = vec![("kernel".into(), start, count)];
    if let Ok(inv) = cx.inventory()
        && k.profile.has_field("module", "tracepoints_ptrs")
    {
        for m in &inv.modules {
            let n = uint(k, m.addr, "module", "num_tracepoints").unwrap_or(0);
            let at = ptr(k, m.addr, "module", "tracepoints_ptrs").unwrap_or(0);
            if n > 0 && at != 0 {
                tables.push((m.name.clone(), at, n.min(MAX_TRACEPOINTS)));
            }
        }
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut examined = 0usize;
    let mut failed = 0usize;
    let mut first_error = None;
    for (owner, base, n) in tables {
        for i in 0..n {
            let res = form
                .read(k, base.wrapping_add(i * form.size()))
                .and_then(|tp| {
                    if !seen.insert(tp) {
                        return Ok(());
                    }
                    examined += 1;
                    probes_of(k, tp, &owner, &mut out)
                });
            match res {
                Ok(()) => {}
                Err(e) if e.is_source_failure() => return Err(e),
                Err(KernelError::Profile(p)) => return Err(KernelError::Profile(p)),
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert(e.to_string());
                }
            }
        }
    }
    if failed > 0 {
        unread.push(format!(
            "{failed} tracepoints unreadable (first: {})",
            first_error.unwrap_or_default()
        ));
    }
    Ok((out, examined))
}

/// A probe outside kernel text: high when no listed module owns it,
/// medium when one does (tracing tools' modules do this too, and so do
/// rootkits).
fn judge(o: &Owner) -> Option<Severity> {
    match o {
        Owner::Kernel(_) => None,
        Owner::Module { hidden: false, .. } => Some(Severity::Medium),
        _ => Some(Severity::High),
    }
}

/// tracepoints [linux.tracing.tracepoints].
pub(crate) fn check(k: &Kernel<'_, '_>, cx: &Context<'_>) -> Result<Report, KernelError> {
    let mut r = Report::default();
    let (probes, examined) = probes(k, cx, &mut r.not_checked)?;
    // A BPF raw tracepoint's probe is kernel code whose data is the program.
    let bpf = if probes.is_empty() {
        None
    } else {
        cx.bpf(k).ok()
    };
    for p in &probes {
        let owner = cx.owner(p.func);
        let symbol = cx.syms().map_or_else(|_| "-".into(), |s| s.text(p.func));
        if let Some(severity) = judge(&owner) {
            r.findings.push(Finding {
                severity,
                check: "tracepoints",
                what: format!(
                    "tracepoint {} calls a probe outside kernel text",
                    p.tracepoint
                ),
                evidence: format!(
                    "tracepoint {:#x} ({}) probe {:#x}, data {:#x}",
                    p.tp_addr, p.defined_in, p.func, p.data
                ),
                owner: owner.describe(),
            });
        }
        r.rows.push(Row {
            fields: vec![
                ("tracepoint", Value::Str(p.tracepoint.clone())),
                ("address", Value::UInt(p.tp_addr)),
                ("defined_in", Value::Str(p.defined_in.clone())),
                ("probe", Value::UInt(p.func)),
                ("symbol", Value::Str(symbol)),
                ("priority", p.prio.map_or(Value::Null, Value::Int)),
                ("data", Value::UInt(p.data)),
                (
                    "bpf_program",
                    Value::Str(
                        bpf.and_then(|b| b.describe(p.data))
                            .unwrap_or_else(|| "-".into()),
                    ),
                ),
                ("owner", Value::Str(owner.describe())),
            ],
        });
    }
    r.examined = format!("{examined} tracepoints, {} probes attached", r.rows.len());
    Ok(r)
}

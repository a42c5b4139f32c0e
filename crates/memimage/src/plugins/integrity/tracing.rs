//! Tracing hooks: ftrace ops and kprobes whose callbacks lie outside kernel
//! text. Ftrace is how recent rootkits hook functions without patching
//! code (livepatch uses it by design, so livepatch modules are told
//! apart), and a kprobe's handlers run before the probed instruction.

use super::{Context, Finding, Owner, Report, Severity};
use crate::kernel::{Kernel, KernelError};
use crate::plugins::util::{ptr, uint};
use crate::plugins::{Row, Value};
use std::collections::HashSet;

/// Ops, buckets and entries are few; more is a corrupt or looping list.
const MAX_WALK: usize = 1 << 14;

fn symbol(cx: &Context<'_>, addr: u64) -> String {
    cx.syms().map_or_else(|_| "-".into(), |s| s.text(addr))
}

/// A callback outside the kernel: high when no listed module owns it,
/// medium when a listed module does (ftrace hooking is how modern
/// rootkits work), nothing for livepatch modules.
fn judge(o: &Owner, livepatch: bool) -> Option<Severity> {
    match o {
        Owner::Kernel(_) => None,
        Owner::Module { hidden: false, .. } if livepatch => None,
        Owner::Module { hidden: false, .. } => Some(Severity::Medium),
        _ => Some(Severity::High),
    }
}

/// The functions an ops' filter hash names (what it hooks).
fn filtered(k: &Kernel<'_, '_>, cx: &Context<'_>, ops: u64) -> Vec<String> {
    let walk = || -> Result<Vec<String>, KernelError> {
        let hash_ptr = ptr(k, ops, "ftrace_ops", "func_hash")?;
        if hash_ptr == 0 {
            return Ok(Vec::new());
        }
        let hash = ptr(k, hash_ptr, "ftrace_ops_hash", "filter_hash")?;
        if hash == 0 {
            return Ok(Vec::new());
        }
        let bits = uint(k, hash, "ftrace_hash", "size_bits")?.min(12);
        let buckets = ptr(k, hash, "ftrace_hash", "buckets")?;
        let ip_off = k.profile.offset("ftrace_func_entry", "ip")?;
        let mut out = Vec::new();
        for b in 0..(1u64 << bits) {
            let mut node = k.read_u64(buckets.wrapping_add(b * 8), || "ftrace bucket".into())?;
            let mut seen = HashSet::new();
            while node != 0 && seen.insert(node) && out.len() < MAX_WALK {
                let ip = k.read_u64(node.wrapping_add(ip_off), || "ftrace entry".into())?;
                out.push(symbol(cx, ip));
                node = k.read_u64(node, || "ftrace entry next".into())?;
            }
        }
        Ok(out)
    };
    walk().unwrap_or_else(|e| vec![format!("(filter unreadable: {e})")])
}

fn is_livepatch(k: &Kernel<'_, '_>, cx: &Context<'_>, o: &Owner) -> bool {
    let Owner::Module { name, .. } = o else {
        return false;
    };
    let Ok(inv) = cx.inventory() else {
        return false;
    };
    inv.modules
        .iter()
        .filter(|m| &m.name == name)
        .any(|m| uint(k, m.addr, "module", "klp").is_ok_and(|v| v != 0))
}

/// ftrace: every `ftrace_ops` on `ftrace_ops_list`.
pub(crate) fn ftrace(k: &Kernel<'_, '_>, cx: &Context<'_>) -> Result<Report, KernelError> {
    let end = k.symbol("ftrace_list_end")?;
    let mut ops = k.read_u64(k.symbol("ftrace_ops_list")?, || "ftrace_ops_list".into())?;
    let mut r = Report::default();
    let mut seen = HashSet::new();
    while ops != end && ops != 0 && seen.insert(ops) && seen.len() < MAX_WALK {
        let func = ptr(k, ops, "ftrace_ops", "func")?;
        let owner = cx.owner(func);
        let hooked = filtered(k, cx, ops);
        if let Some(severity) = judge(&owner, is_livepatch(k, cx, &owner)) {
            r.findings.push(Finding {
                severity,
                check: "ftrace",
                what: format!(
                    "ftrace hook on {}",
                    if hooked.is_empty() {
                        "every traced function".to_string()
                    } else {
                        hooked.join(", ")
                    }
                ),
                evidence: format!("ftrace_ops {ops:#x} calls {func:#x}"),
                owner: owner.describe(),
            });
        }
        r.rows.push(Row {
            fields: vec![
                ("ops", Value::UInt(ops)),
                ("callback", Value::UInt(func)),
                ("symbol", Value::Str(symbol(cx, func))),
                ("hooked", Value::Str(hooked.join(", "))),
                ("owner", Value::Str(owner.describe())),
            ],
        });
        ops = ptr(k, ops, "ftrace_ops", "next")?;
    }
    r.examined = format!("{} ftrace ops", r.rows.len());
    Ok(r)
}

/// Every probe in `kprobe_table` (an aggregate probe, not the probes it
/// holds on one address).
pub(crate) fn kprobe_list(k: &Kernel<'_, '_>) -> Result<Vec<u64>, KernelError> {
    let table = k.symbol("kprobe_table")?;
    let count = k
        .profile
        .symbols
        .get("kprobe_table")
        .and_then(|s| match &s.ty {
            Some(crate::profile::TypeRef::Array { count, .. }) => Some(*count),
            _ => None,
        })
        .unwrap_or(64)
        .min(1024);
    let hlist = k.profile.offset("kprobe", "hlist")?;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for b in 0..count {
        let mut node = k.read_u64(table.wrapping_add(b * 8), || "kprobe_table".into())?;
        while node != 0 && seen.insert(node) && seen.len() < MAX_WALK {
            out.push(node.wrapping_sub(hlist));
            node = k.read_u64(node, || "kprobe next".into())?;
        }
    }
    Ok(out)
}

/// kprobes: every probe in `kprobe_table`, with its handlers.
pub(crate) fn kprobes(k: &Kernel<'_, '_>, cx: &Context<'_>) -> Result<Report, KernelError> {
    let mut r = Report::default();
    let probes = kprobe_list(k)?;
    for &kp in &probes {
        let addr = ptr(k, kp, "kprobe", "addr")?;
        for field in ["pre_handler", "post_handler"] {
            let h = ptr(k, kp, "kprobe", field)?;
            if h == 0 {
                continue;
            }
            let owner = cx.owner(h);
            if let Some(severity) = judge(&owner, false) {
                r.findings.push(Finding {
                    severity,
                    check: "kprobes",
                    what: format!(
                        "kprobe on {} runs code outside the kernel",
                        symbol(cx, addr)
                    ),
                    evidence: format!("kprobe {kp:#x} {field} {h:#x}"),
                    owner: owner.describe(),
                });
            }
            r.rows.push(Row {
                fields: vec![
                    ("kprobe", Value::UInt(kp)),
                    ("probed", Value::Str(symbol(cx, addr))),
                    ("handler", Value::Str(field.into())),
                    ("address", Value::UInt(h)),
                    ("owner", Value::Str(owner.describe())),
                ],
            });
        }
    }
    r.examined = format!("{} kprobes", probes.len());
    Ok(r)
}

//! check_syscall: every entry of every system-call table, and the cases of
//! the generated dispatchers (`x64_sys_call` and friends) that really
//! dispatch on kernels with the 2024 branch-history fix. Targets are
//! compared by address with the handler the number must reach, found by
//! name (numbers are ABI, see `syscall_names`), and every flagged address
//! is named by its owner. Each handler's entry is checked for an inline
//! hook (a jump, or an ftrace site calling anything but ftrace).

use super::dispatch::{self, Case};
use super::entry;
use super::syscall_names::{self, Entry};
use super::{Context, Finding, Owner, Report, Severity, Symbols};
use crate::kernel::{Kernel, KernelError};
use crate::plugins::{Row, Value};
use std::collections::BTreeSet;

/// A dispatcher is never longer than this (6.12's `x64_sys_call` is ~6 KiB).
const MAX_DISPATCHER: u64 = 64 << 10;
/// Tables are never longer than this many entries.
const MAX_TABLE: u64 = 1024;

struct Abi {
    label: &'static str,
    table: &'static str,
    /// The generated dispatcher, where the kernel has one ("" for none).
    dispatcher: &'static str,
    names: &'static str,
    /// Prefix of the 64-bit entry points.
    prefix: &'static str,
    /// A number without a handler must reach ni_syscall. Where the names
    /// are not known this well (AArch64), such an entry need only be
    /// kernel code.
    strict: bool,
}

const X86_ABIS: &[Abi] = &[
    Abi {
        label: "64bit",
        table: "sys_call_table",
        dispatcher: "x64_sys_call",
        names: syscall_names::X64,
        prefix: "__x64_sys_",
        strict: true,
    },
    Abi {
        label: "32bit",
        table: "ia32_sys_call_table",
        dispatcher: "ia32_sys_call",
        names: syscall_names::IA32,
        prefix: "__x64_sys_",
        strict: true,
    },
    Abi {
        label: "x32",
        table: "x32_sys_call_table",
        dispatcher: "x32_sys_call",
        names: syscall_names::X32,
        prefix: "__x64_sys_",
        strict: true,
    },
];

/// AArch64 dispatches through the table itself (`invoke_syscall`). The
/// AArch32 compat table has its own numbering, not kept here: its entries
/// are judged by their owner alone.
const ARM64_ABIS: &[Abi] = &[
    Abi {
        label: "64bit",
        table: "sys_call_table",
        dispatcher: "",
        names: syscall_names::ARM64,
        prefix: "__arm64_sys_",
        strict: false,
    },
    Abi {
        label: "32bit",
        table: "compat_sys_call_table",
        dispatcher: "",
        names: "",
        prefix: "__arm64_compat_sys_",
        strict: false,
    },
];

fn abis(k: &Kernel<'_, '_>) -> &'static [Abi] {
    if k.is_aarch64() { ARM64_ABIS } else { X86_ABIS }
}

impl Abi {
    /// Handler symbols a number may reach, most specific first.
    fn handler_names(&self, e: &Entry<'_>) -> Vec<String> {
        let mut out = Vec::new();
        match self.label {
            "32bit" => {
                for c in &e.compat {
                    out.push(format!("__ia32_{c}"));
                }
                for n in &e.entries {
                    out.push(format!("__ia32_sys_{n}"));
                }
            }
            "x32" => {
                for n in &e.entries {
                    match n.strip_prefix("compat_sys_") {
                        Some(c) => out.push(format!("__x64_compat_sys_{c}")),
                        None => out.push(format!("__x64_sys_{n}")),
                    }
                }
            }
            _ => {
                for n in &e.entries {
                    out.push(format!("{}{n}", self.prefix));
                }
            }
        }
        out
    }
}

/// The addresses a number may legitimately reach, and the name to print.
fn expected(k: &Kernel<'_, '_>, abi: &Abi, nr: u64) -> (Vec<u64>, String) {
    let ni = [
        "__x64_sys_ni_syscall",
        "__ia32_sys_ni_syscall",
        "__arm64_sys_ni_syscall",
        "sys_ni_syscall",
    ]
    .iter()
    .filter_map(|n| k.symbol(n).ok())
    .collect::<Vec<_>>();
    let Some(e) = usize::try_from(nr)
        .ok()
        .and_then(|n| syscall_names::entry(abi.names, n))
    else {
        return (if abi.strict { ni } else { Vec::new() }, "-".into());
    };
    let mut addrs: Vec<u64> = abi
        .handler_names(&e)
        .iter()
        .filter_map(|n| k.symbol(n).ok())
        .collect();
    // A number with no handler on this kernel (a call added later, or
    // removed) must reach ni_syscall.
    if e.entries.contains(&"ni_syscall") || (addrs.is_empty() && abi.strict) {
        addrs.extend(&ni);
    }
    (addrs, e.name.to_string())
}

#[allow(clippy::too_many_arguments)]
fn row(
    table: &str,
    source: &str,
    nr: u64,
    name: &str,
    addr: u64,
    syms: &Symbols<'_>,
    hooked: bool,
    owner: &Owner,
) -> Row {
    Row {
        fields: vec![
            ("table", Value::Str(table.into())),
            ("source", Value::Str(source.into())),
            ("index", Value::UInt(nr)),
            ("name", Value::Str(name.into())),
            ("handler", Value::UInt(addr)),
            ("symbol", Value::Str(syms.text(addr))),
            ("hooked", Value::Str(hooked.to_string())),
            ("owner", Value::Str(owner.describe())),
        ],
    }
}

/// A target is hooked when it is not one of the expected handlers, or,
/// when none is known, when it is not the start of a kernel function.
fn is_hooked(syms: &Symbols<'_>, expected: &[u64], addr: u64) -> bool {
    if expected.is_empty() {
        return !matches!(syms.name(addr), Some((_, 0)));
    }
    !expected.contains(&addr)
}

pub(crate) fn check(k: &Kernel<'_, '_>, cx: &Context<'_>) -> Result<Report, KernelError> {
    let syms = cx.syms()?;
    let mut r = Report::default();
    let mut handlers = BTreeSet::new();
    let mut any = false;
    for abi in abis(k) {
        if let Ok(t) = k.symbol(abi.table) {
            any = true;
            check_table(k, cx, syms, abi, t, &mut r, &mut handlers);
        }
        if abi.dispatcher.is_empty() {
            continue;
        }
        if let Ok(d) = k.symbol(abi.dispatcher) {
            any = true;
            check_dispatcher(k, cx, syms, abi, d, &mut r, &mut handlers);
        }
    }
    if !any {
        r.not_checked
            .push("no system-call table or dispatcher symbol in the profile".into());
    }
    let entries = handlers.len();
    for h in handlers {
        entry::check(k, cx, syms, h, &mut r);
    }
    let by_source = |s: &str| {
        r.rows
            .iter()
            .filter(|row| row.get("source") == Some(&Value::Str(s.into())))
            .count()
    };
    let mut parts = Vec::new();
    for abi in abis(k) {
        for src in [abi.table, abi.dispatcher] {
            let n = by_source(src);
            if n > 0 {
                parts.push(format!("{n} {src} entries"));
            }
        }
    }
    parts.push(format!("{entries} handler entry points"));
    r.examined = parts.join(", ");
    Ok(r)
}

fn check_table(
    k: &Kernel<'_, '_>,
    cx: &Context<'_>,
    syms: &Symbols<'_>,
    abi: &Abi,
    table: u64,
    r: &mut Report,
    handlers: &mut BTreeSet<u64>,
) {
    // The next symbol bounds the table; zero words after the last entry
    // are alignment padding, not entries.
    let names = abi.names.split_ascii_whitespace().count() as u64;
    let len = next_symbol(k, table).map_or(names, |n| (n.saturating_sub(table) / 8).min(MAX_TABLE));
    let mut entries: Vec<Option<u64>> = (0..len)
        .map(|nr| k.vm.read_u64(table.wrapping_add(nr * 8)).ok())
        .collect();
    while entries.last() == Some(&Some(0)) {
        entries.pop();
    }
    // Beyond the numbers known, the table ends at the first word that is
    // no kernel address: the next symbol may lie past other data (arm64's
    // table is followed by strings).
    let kernel_space = |a: u64| k.mode.is_canonical(a) && a >= k.mode.upper_half();
    if let Some(end) = entries
        .iter()
        .enumerate()
        .skip(usize::try_from(names).unwrap_or(usize::MAX))
        .find(|(_, e)| e.is_some_and(|a| !kernel_space(a)))
        .map(|(i, _)| i)
    {
        entries.truncate(end);
    }
    for (nr, addr) in entries.into_iter().enumerate() {
        let nr = nr as u64;
        let Some(addr) = addr else {
            r.not_checked
                .push(format!("{} entry {nr}: unreadable", abi.table));
            continue;
        };
        let (exp, mut name) = expected(k, abi, nr);
        // Numbers not kept here (arm64's AArch32 table): the handler names it.
        if name == "-"
            && let Some((sym, 0)) = syms.name(addr)
            && let Some(call) = ["__arm64_compat_sys_", "__arm64_sys_"]
                .iter()
                .find_map(|p| sym.strip_prefix(p))
        {
            name = call.to_string();
        }
        let hooked = is_hooked(syms, &exp, addr);
        let owner = cx.owner(addr);
        handlers.extend(exp.iter().take(1));
        if hooked {
            r.findings.push(Finding {
                severity: if owner.is_kernel() {
                    Severity::Medium
                } else {
                    Severity::High
                },
                check: "check_syscall",
                what: format!(
                    "{} system call {nr} ({name}) is redirected in {}",
                    abi.label, abi.table
                ),
                evidence: format!(
                    "entry holds {addr:#x} ({}), expected {}",
                    syms.text(addr),
                    expected_text(syms, &exp)
                ),
                owner: owner.describe(),
            });
        }
        r.rows.push(row(
            abi.label, abi.table, nr, &name, addr, syms, hooked, &owner,
        ));
    }
}

/// The next symbol of any kind (the table may sit outside kernel text).
fn next_symbol(k: &Kernel<'_, '_>, addr: u64) -> Option<u64> {
    k.profile
        .symbols
        .values()
        .map(|s| s.address.wrapping_add(k.aslr_shift))
        .filter(|&a| a > addr)
        .min()
}

fn expected_text(syms: &Symbols<'_>, exp: &[u64]) -> String {
    match exp.first() {
        Some(&a) => format!("{} at {a:#x}", syms.text(a)),
        None => "a kernel function".into(),
    }
}

fn check_dispatcher(
    k: &Kernel<'_, '_>,
    cx: &Context<'_>,
    syms: &Symbols<'_>,
    abi: &Abi,
    start: u64,
    r: &mut Report,
    handlers: &mut BTreeSet<u64>,
) {
    let end = syms
        .next_after(start)
        .unwrap_or(start + MAX_DISPATCHER)
        .min(start + MAX_DISPATCHER);
    let mut code = vec![0u8; usize::try_from(end - start).unwrap_or(0)];
    if let Err(e) = super::read_judged(k, start, &mut code) {
        r.not_checked
            .push(format!("{}: its code cannot be read ({e})", abi.dispatcher));
        return;
    }
    let cases = match dispatch::decode(&code, start) {
        Ok(c) => c,
        Err(e) => {
            r.not_checked.push(format!(
                "{}: not a compare tree this decoder knows ({e})",
                abi.dispatcher
            ));
            return;
        }
    };
    let names = abi.names.split_ascii_whitespace().count() as u64;
    // Numbers beyond the last named one must all reach the default case.
    let last = cases
        .iter()
        .flat_map(|c| c.numbers.iter().map(|&(_, e)| u64::from(e)))
        .filter(|&e| e < u64::from(u32::MAX))
        .max()
        .unwrap_or(0)
        .max(names.saturating_sub(1));
    for nr in 0..=last.min(MAX_TABLE) {
        let Some(case) = dispatch::target_of(&cases, nr as u32) else {
            r.not_checked
                .push(format!("{}: no case reaches number {nr}", abi.dispatcher));
            continue;
        };
        let (exp, name) = expected(k, abi, nr);
        handlers.extend(exp.iter().take(1));
        push_case(cx, syms, abi, nr, &name, case, &exp, r);
    }
    if let Some(default) = dispatch::target_of(&cases, u32::MAX) {
        let (exp, _) = expected(k, abi, u64::from(u32::MAX));
        push_case(cx, syms, abi, last + 1, "(default)", default, &exp, r);
    }
}

#[allow(clippy::too_many_arguments)]
fn push_case(
    cx: &Context<'_>,
    syms: &Symbols<'_>,
    abi: &Abi,
    nr: u64,
    name: &str,
    case: &Case,
    exp: &[u64],
    r: &mut Report,
) {
    let hooked = is_hooked(syms, exp, case.target);
    let owner = cx.owner(case.target);
    if hooked {
        r.findings.push(Finding {
            severity: Severity::High,
            check: "check_syscall",
            what: format!(
                "{} system call {nr} ({name}) is redirected in {}",
                abi.label, abi.dispatcher
            ),
            evidence: format!(
                "the case at {:#x} jumps to {:#x} ({}), expected {}",
                case.site,
                case.target,
                syms.text(case.target),
                expected_text(syms, exp)
            ),
            owner: owner.describe(),
        });
    }
    r.rows.push(row(
        abi.label,
        abi.dispatcher,
        nr,
        name,
        case.target,
        syms,
        hooked,
        &owner,
    ));
}

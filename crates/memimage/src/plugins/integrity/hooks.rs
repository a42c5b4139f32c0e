//! Function pointers the kernel calls on events, which rootkits replace or
//! add to: the interrupt descriptor table, keyboard notifiers (keyloggers)
//! and netfilter hooks (backdoors that wake on a packet). A pointer outside
//! kernel text is named by the module owning it; one that a hidden module
//! or no module owns is a finding.

use super::{Context, Finding, Owner, Report, Severity};
use crate::kernel::{Kernel, KernelError};
use crate::plugins::tasks::walk_list;
use crate::plugins::util::{array_field, ptr, uint};
use crate::plugins::{Row, Value};
use std::collections::HashSet;

/// Chains and hook arrays are short; a longer one is corrupt.
const MAX_CHAIN: usize = 4096;

fn severity(o: &Owner) -> Option<Severity> {
    match o {
        Owner::Kernel(_) => None,
        Owner::Module { hidden: false, .. } => None,
        Owner::Module { hidden: true, .. } | Owner::Unknown => Some(Severity::High),
    }
}

/// check_idt: each present gate of `idt_table` must enter kernel text.
pub(crate) fn check_idt(k: &Kernel<'_, '_>, cx: &Context<'_>) -> Result<Report, KernelError> {
    if k.is_aarch64() {
        return Ok(Report {
            not_applicable: Some(
                "arm64 has no interrupt descriptor table (exceptions enter through VBAR_EL1's vectors)"
                    .into(),
            ),
            ..Report::default()
        });
    }
    let table = k.symbol("idt_table")?;
    let mut raw = vec![0u8; 256 * 16];
    k.read(table, &mut raw, || "idt_table".into())?;
    let mut r = Report::default();
    for (i, g) in raw.chunks_exact(16).enumerate() {
        let u16_at = |o: usize| {
            g.get(o..o + 2)
                .and_then(|b| b.try_into().ok())
                .map_or(0, |b| u64::from(u16::from_le_bytes(b)))
        };
        let bits = u16_at(4);
        if bits & 0x8000 == 0 {
            continue;
        }
        let high = u16_at(8) | (u16_at(10) << 16);
        let addr = u16_at(0) | (u16_at(6) << 16) | (high << 32);
        let owner = cx.owner(addr);
        let bad = !owner.is_kernel();
        if bad {
            r.findings.push(Finding {
                severity: Severity::High,
                check: "check_idt",
                what: format!("interrupt vector {i:#x} enters code outside kernel text"),
                evidence: format!("gate handler {addr:#x}"),
                owner: owner.describe(),
            });
        }
        r.rows.push(Row {
            fields: vec![
                ("index", Value::UInt(i as u64)),
                ("address", Value::UInt(addr)),
                ("symbol", owner.symbol()),
                ("hooked", Value::Str(bad.to_string())),
                ("owner", Value::Str(owner.describe())),
            ],
        });
    }
    r.examined = format!("{} present IDT gates", r.rows.len());
    Ok(r)
}

/// keyboard_notifiers: the `keyboard_notifier_list` chain.
pub(crate) fn keyboard_notifiers(
    k: &Kernel<'_, '_>,
    cx: &Context<'_>,
) -> Result<Report, KernelError> {
    let head = k.symbol("keyboard_notifier_list")?;
    let mut nb = ptr(k, head, "atomic_notifier_head", "head")?;
    let mut r = Report::default();
    let mut seen = HashSet::new();
    while nb != 0 && seen.insert(nb) && seen.len() < MAX_CHAIN {
        let call = ptr(k, nb, "notifier_block", "notifier_call")?;
        let owner = cx.owner(call);
        // A keyboard notifier outside the kernel is how keyloggers listen.
        if !owner.is_kernel() {
            r.findings.push(Finding {
                severity: severity(&owner).unwrap_or(Severity::Medium),
                check: "keyboard_notifiers",
                what: "keyboard notifier outside kernel text (keystrokes reach it)".into(),
                evidence: format!("notifier_block {nb:#x} calls {call:#x}"),
                owner: owner.describe(),
            });
        }
        r.rows.push(Row {
            fields: vec![
                ("address", Value::UInt(call)),
                ("symbol", owner.symbol()),
                ("owner", Value::Str(owner.describe())),
            ],
        });
        nb = ptr(k, nb, "notifier_block", "next")?;
    }
    r.examined = format!("{} keyboard notifiers", r.rows.len());
    Ok(r)
}

/// Protocol families whose hook arrays `netns_nf` holds.
const FAMILIES: &[(&str, &str)] = &[
    ("hooks_ipv4", "ipv4"),
    ("hooks_ipv6", "ipv6"),
    ("hooks_arp", "arp"),
    ("hooks_bridge", "bridge"),
];

/// netfilter: every hook of every network namespace.
pub(crate) fn netfilter(k: &Kernel<'_, '_>, cx: &Context<'_>) -> Result<Report, KernelError> {
    let p = k.profile;
    let list_off = p.offset("net", "list")?;
    let nf_off = p.offset("net", "nf")?;
    let nets = walk_list(
        k,
        k.symbol("net_namespace_list")?,
        list_off,
        "net_namespace_list",
    )?;
    let hooks_off = p.offset("nf_hook_entries", "hooks")?;
    let entry_size = p.struct_def("nf_hook_entry")?.size.max(16);
    let hook_fn = p.offset("nf_hook_entry", "hook")?;
    let mut r = Report::default();
    let namespaces = nets.len();
    for net in nets {
        let inum = p
            .offset("net", "ns")
            .and_then(|ns| Ok(ns + p.offset("ns_common", "inum")?))
            .ok()
            .and_then(|o| k.vm.read_uint(net.wrapping_add(o), 4).ok())
            .unwrap_or(0);
        for (field, family) in FAMILIES {
            let Ok((off, count)) = array_field(k, "netns_nf", field) else {
                continue;
            };
            for hook in 0..count.min(16) {
                let slot = net.wrapping_add(nf_off + off + hook * 8);
                let Ok(entries) = k.vm.read_u64(slot) else {
                    r.not_checked
                        .push(format!("net {inum} {family} hook {hook}: unreadable"));
                    continue;
                };
                if entries == 0 {
                    continue;
                }
                let n = uint(k, entries, "nf_hook_entries", "num_hook_entries")?;
                for i in 0..n.min(MAX_CHAIN as u64) {
                    let at = entries.wrapping_add(hooks_off + i * entry_size + hook_fn);
                    let Ok(func) = k.vm.read_u64(at) else {
                        continue;
                    };
                    let owner = cx.owner(func);
                    if let Some(sev) = severity(&owner) {
                        r.findings.push(Finding {
                            severity: sev,
                            check: "netfilter",
                            what: format!(
                                "netfilter {family} hook {hook} in net namespace {inum} runs code no listed module owns"
                            ),
                            evidence: format!("hook function {func:#x}"),
                            owner: owner.describe(),
                        });
                    }
                    r.rows.push(Row {
                        fields: vec![
                            ("net_ns", Value::UInt(inum)),
                            ("family", Value::Str((*family).into())),
                            ("hook", Value::UInt(hook)),
                            ("address", Value::UInt(func)),
                            ("symbol", owner.symbol()),
                            ("owner", Value::Str(owner.describe())),
                        ],
                    });
                }
            }
        }
    }
    r.examined = format!(
        "{} netfilter hooks in {namespaces} network namespaces",
        r.rows.len()
    );
    Ok(r)
}

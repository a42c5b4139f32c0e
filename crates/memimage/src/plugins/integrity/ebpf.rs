//! ebpf [linux.ebpf.EBPF]: every loaded eBPF program with what it attaches
//! to, the helpers it calls, and who holds it.
//!
//! Loading and attaching programs is ordinary (systemd attaches cgroup
//! programs at every boot; tracing and security agents attach kprobes,
//! tracepoints and LSM hooks), so a program is a row, not a finding, by
//! its type or attach point alone. Findings are what eBPF rootkits need
//! and ordinary programs do not:
//!
//! - high: a program that calls `bpf_probe_write_user` (rewrites what a
//!   process reads: the technique of the public eBPF rootkits; the kernel
//!   warns when one loads); a program the kernel runs (on the BPF symbol
//!   list, attached by a link or found on a hook, references held) that
//!   `prog_idr` does not show, hidden from `bpftool`; a hook running a
//!   program through a live link that `link_idr` does not show;
//! - medium: a program that changes what kernel functions return
//!   (`bpf_override_return`, or an fmod_ret tracing program) or sends
//!   signals (`bpf_send_signal`, `bpf_send_signal_thread`): how eBPF
//!   rootkits hide files and kill tools, and what enforcement agents do.

use super::bpf::{Bpf, Program};
use super::bpf_names::MODIFY_RETURN;
use super::{Context, Finding, Report, Severity};
use crate::kernel::{Kernel, KernelError};
use crate::plugins::tasks::{boot_time_ns, wall_clock};
use crate::plugins::{Row, Value};

/// What a program does that rootkits need, with the weight of it.
fn concerns(p: &Program) -> Vec<(Severity, String)> {
    let mut out = Vec::new();
    let calls = |h: &str| p.helpers.iter().any(|x| x == h);
    if calls("bpf_probe_write_user") {
        out.push((
            Severity::High,
            "calls bpf_probe_write_user (writes into processes' memory)".to_string(),
        ));
    }
    if p.kprobe_override || calls("bpf_override_return") {
        out.push((
            Severity::Medium,
            "calls bpf_override_return (changes what a kernel function returns)".into(),
        ));
    }
    if p.kind == "tracing" && p.expected_attach_raw == MODIFY_RETURN {
        out.push((
            Severity::Medium,
            "is an fmod_ret program (changes what a kernel function returns)".into(),
        ));
    }
    for h in ["bpf_send_signal", "bpf_send_signal_thread"] {
        if calls(h) {
            out.push((Severity::Medium, format!("calls {h} (signals processes)")));
        }
    }
    out
}

/// A live program the kernel runs but `prog_idr` does not list.
fn hidden(p: &Program, b: &Bpf) -> Option<String> {
    if p.in_idr || p.is_func || p.refcnt == 0 {
        return None;
    }
    let mut why = Vec::new();
    if p.in_kallsyms {
        why.push("on the BPF symbol list".to_string());
    }
    for l in b.links.iter().filter(|l| l.prog == p.addr) {
        why.push(format!("attached by link {} ({})", l.id, l.kind));
    }
    for a in b.attachments.iter().filter(|a| a.prog == p.addr) {
        why.push(format!("attached to {}", a.point));
    }
    (!why.is_empty()).then(|| why.join(", "))
}

/// Attachments no link of `link_idr` accounts for: made without a link,
/// or by a link hidden from the list (`Some(link)`). A perf link's
/// attachment is known by its point, since trace events keep no link.
fn unlinked<'b>(p: &Program, b: &'b Bpf) -> Vec<(&'b str, Option<u64>)> {
    let mut out = Vec::new();
    for a in b.attachments.iter().filter(|a| a.prog == p.addr) {
        let listed = match a.link {
            Some(l) => b.links.iter().any(|x| x.addr == l),
            None => b
                .links
                .iter()
                .any(|x| x.prog == p.addr && x.attach == a.point),
        };
        if !listed && !out.iter().any(|(pt, _)| *pt == a.point.as_str()) {
            out.push((a.point.as_str(), a.link));
        }
    }
    out
}

fn attached(p: &Program, b: &Bpf) -> String {
    let mut out: Vec<String> = b
        .links
        .iter()
        .filter(|l| l.prog == p.addr)
        .map(|l| format!("link {} {}: {}", l.id, l.kind, l.attach))
        .collect();
    for (point, link) in unlinked(p, b) {
        out.push(match link {
            Some(l) => format!("{point} (link {l:#x}, not in link_idr)"),
            None => point.to_string(),
        });
    }
    if let Some(f) = &p.attach_func
        && out.is_empty()
    {
        out.push(format!("{} {f}", p.expected_attach));
    }
    if out.is_empty() {
        "-".into()
    } else {
        out.join("; ")
    }
}

/// References to the link at `link` (an `atomic64_t`).
fn link_refs(k: &Kernel<'_, '_>, link: u64) -> Option<u64> {
    let off = k.profile.offset("bpf_link", "refcnt").ok()?;
    k.vm.read_u64(link.wrapping_add(off)).ok()
}

pub(crate) fn check(k: &Kernel<'_, '_>, cx: &Context<'_>) -> Result<Report, KernelError> {
    let b = cx.bpf(k)?;
    let mut r = Report {
        not_checked: b.not_checked.clone(),
        ..Report::default()
    };
    let boot = boot_time_ns(k);
    for p in &b.programs {
        if p.is_func {
            continue;
        }
        let holders = b.holders_of(p.addr);
        let owner = if holders.is_empty() {
            "no process holds it open (kept by its attachment or a pin)".to_string()
        } else {
            holders.join(", ")
        };
        let who = format!("eBPF program {} ({}, {})", p.id, p.name, p.kind);
        let evidence = format!("bpf_prog {:#x}, tag {}", p.addr, p.tag);
        for (severity, what) in concerns(p) {
            r.findings.push(Finding {
                severity,
                check: "ebpf",
                what: format!("{who} {what}"),
                evidence: evidence.clone(),
                owner: owner.clone(),
            });
        }
        for (point, link) in unlinked(p, b) {
            let Some(link) = link else { continue };
            // A link being freed leaves link_idr before its hook.
            if link_refs(k, link) == Some(0) {
                continue;
            }
            r.findings.push(Finding {
                severity: Severity::High,
                check: "ebpf",
                what: format!("{who} is attached by a link hidden from the link list (link_idr)"),
                evidence: format!("bpf_link {link:#x} on {point}"),
                owner: owner.clone(),
            });
        }
        if let Some(why) = hidden(p, b) {
            r.findings.push(Finding {
                severity: Severity::High,
                check: "ebpf",
                what: format!("{who} is hidden from the program list (prog_idr)"),
                evidence: format!("{evidence}: {why}"),
                owner: owner.clone(),
            });
        }
        let (jit_start, jit_end) = p.image.unwrap_or((0, 0));
        r.rows.push(Row {
            fields: vec![
                ("id", Value::UInt(p.id)),
                ("name", Value::Str(p.name.clone())),
                ("type", Value::Str(p.kind.clone())),
                ("tag", Value::Str(p.tag.clone())),
                ("address", Value::UInt(p.addr)),
                (
                    "loaded",
                    p.load_time.map_or(Value::Null, |t| wall_clock(boot, t)),
                ),
                ("jit_start", Value::UInt(jit_start)),
                ("jit_end", Value::UInt(jit_end)),
                ("attached", Value::Str(attached(p, b))),
                ("helpers", Value::Str(p.helpers.join(", "))),
                ("in_idr", Value::Str(p.in_idr.to_string())),
                ("in_kallsyms", Value::Str(p.in_kallsyms.to_string())),
                ("held_by", Value::Str(owner)),
            ],
        });
    }
    let l = b.looked;
    r.examined = format!(
        "{} eBPF programs, {} links; the hooks of {} cgroups, {} network devices and {} trace events",
        r.rows.len(),
        b.links.len(),
        l.cgroups,
        l.devices,
        l.events
    );
    Ok(r)
}

//! unowned_code: executable memory in module space that nothing known
//! owns. A rootkit that frees or wipes its `struct module` (or never had
//! one: code copied in by an exploit) still needs its code mapped
//! executable somewhere the kernel can call, and on x86-64 that is module
//! space (`MODULES_VADDR`..`MODULES_END`), where every allocation of
//! executable kernel memory goes.
//!
//! The kernel's page tables over that range give every present page that
//! is executable (no NX bit at any level). Each is owned by a module (its
//! regions from the list, sysfs, `mod_tree` or carving, and its ITS thunk
//! pages), by the BPF JIT (a program's image from `bpf_kallsyms`, which
//! also names trampolines and dispatchers, a `bpf_prog_pack`, or a
//! struct_ops map's trampoline page), by
//! kprobes (the instruction slot pages of `kprobe_insn_slots` and
//! `kprobe_optinsn_slots`), by ftrace (an ops' trampoline, or a page
//! starting with a copy of `ftrace_regs_caller`/`ftrace_caller`, which is
//! what a trampoline is), or holds no code (all `int3` or zero). The rest
//! is a finding.

use super::{Context, Finding, Owner, Report, Severity};
use crate::kernel::{Kernel, KernelError};
use crate::memory::PagingMode;
use crate::plugins::tasks::walk_list;
use crate::plugins::util::ptr;
use crate::plugins::{Row, Value};

/// x86-64 module space: `MODULES_VADDR` is the kernel image area's end
/// (`__START_KERNEL_map` + 512 MiB, or 1 GiB with KASLR), `MODULES_END` is
/// fixed below the fixmap.
const MODULES_VADDR_512M: u64 = 0xffff_ffff_a000_0000;
const MODULES_END: u64 = 0xffff_ffff_ff00_0000;
const X86_ADDR: u64 = 0x000f_ffff_ffff_f000;
const NX: u64 = 1 << 63;
/// Executable pages looked at, at most (1 GiB of 4 KiB pages).
const MAX_PAGES: usize = 1 << 18;
/// Bytes of a trampoline compared with the code it is copied from.
const TRAMPOLINE_PREFIX: u64 = 64;

/// Who owns a page of module space.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Holder {
    Module(Owner),
    Bpf(String),
    Kprobes,
    Ftrace,
    Its,
    Filler,
    Unknown,
}

impl Holder {
    fn describe(&self) -> String {
        match self {
            Holder::Module(o) => o.describe(),
            Holder::Bpf(what) => what.clone(),
            Holder::Kprobes => "kprobe instruction slots".into(),
            Holder::Ftrace => "ftrace trampoline".into(),
            Holder::Its => "ITS thunks".into(),
            Holder::Filler => "no code (int3 or zero fill)".into(),
            Holder::Unknown => "unknown (no module owns it)".into(),
        }
    }
}

/// Present, executable leaf mappings `(va, size)` of the kernel's page
/// tables within `[start, end)` (x86-64). Tables missing from the image
/// are counted in `unread`.
fn exec_leaves(k: &Kernel<'_, '_>, start: u64, end: u64, unread: &mut usize) -> Vec<(u64, u64)> {
    let shifts: &[u32] = match k.mode {
        PagingMode::Level5 => &[48, 39, 30, 21, 12],
        _ => &[39, 30, 21, 12],
    };
    let mut out = Vec::new();
    // (table, level, first va the table maps, NX above)
    let mut stack = vec![(k.dtb & X86_ADDR, 0usize, 0u64, false)];
    while let Some((table, level, base, nx_above)) = stack.pop() {
        let Some(&shift) = shifts.get(level) else {
            continue;
        };
        let span = 1u64 << shift;
        let top = shifts.len() == level + 1;
        let mut entries = [0u8; 4096];
        if k.phys.read(table, &mut entries).is_err() {
            *unread += 1;
            continue;
        }
        for (i, raw) in (0u64..).zip(entries.chunks_exact(8)) {
            let lo = if level == 0 && i >= 256 {
                // The upper half is sign-extended.
                (i << shift) | !((1u64 << (shift + 9)) - 1)
            } else {
                base | (i << shift)
            };
            let last = lo + (span - 1);
            if last < start || lo >= end || out.len() >= MAX_PAGES {
                continue;
            }
            let e = u64::from_le_bytes(raw.try_into().unwrap_or([0; 8]));
            if e & 1 == 0 {
                continue;
            }
            let nx = nx_above || e & NX != 0;
            let large = (shift == 30 || shift == 21) && e & 0x80 != 0;
            if top || large {
                if !nx {
                    out.push((lo, span));
                }
            } else {
                stack.push((e & X86_ADDR, level + 1, lo, nx));
            }
        }
    }
    out.sort_unstable();
    out
}

/// Code the kernel copies into module space: the first bytes of
/// `ftrace_regs_caller` and `ftrace_caller` up to their first rip-relative
/// load (`*_op_ptr`), what every ftrace trampoline starts with.
fn trampoline_prefixes(k: &Kernel<'_, '_>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (f, op) in [
        ("ftrace_regs_caller", "ftrace_regs_caller_op_ptr"),
        ("ftrace_caller", "ftrace_caller_op_ptr"),
    ] {
        let (Ok(a), Ok(b)) = (k.symbol(f), k.symbol(op)) else {
            continue;
        };
        let n = b.saturating_sub(a).min(TRAMPOLINE_PREFIX);
        let mut buf = vec![0u8; usize::try_from(n).unwrap_or(0)];
        if n >= 16 && k.vm.read(a, &mut buf).is_ok() {
            out.push(buf);
        }
    }
    out
}

/// A page of ITS thunks: `int3` padding around `jmp *%reg` thunks.
fn its_thunks(page: &[u8]) -> bool {
    let mut i = 0;
    let mut thunks = 0;
    while let Some(&b) = page.get(i) {
        match (b, page.get(i + 1), page.get(i + 2)) {
            (0xcc, _, _) => i += 1,
            (0xff, Some(0xe0..=0xe7), _) => {
                thunks += 1;
                i += 2;
            }
            (0x41, Some(0xff), Some(0xe0..=0xe7)) => {
                thunks += 1;
                i += 3;
            }
            _ => return false,
        }
    }
    thunks > 0
}

/// Owned memory: `(start, end, holder)`.
fn owned(k: &Kernel<'_, '_>, cx: &Context<'_>, r: &mut Report) -> Vec<(u64, u64, Holder)> {
    let mut out = Vec::new();
    if let Ok(inv) = cx.inventory() {
        for m in &inv.modules {
            let o = Owner::Module {
                name: m.name.clone(),
                hidden: !m.in_list,
            };
            out.extend(
                m.regions
                    .iter()
                    .map(|&(s, e)| (s, e, Holder::Module(o.clone()))),
            );
        }
    }
    match cx.bpf(k) {
        Ok(b) => {
            for &(s, e) in &b.packs {
                let inside: Vec<&str> = b
                    .ksyms
                    .iter()
                    .filter(|(a, _, _)| *a >= s && *a < e)
                    .map(|(_, _, n)| n.as_str())
                    .collect();
                let what = if inside.is_empty() {
                    "BPF JIT pack".to_string()
                } else {
                    format!("BPF JIT pack: {}", inside.join(", "))
                };
                out.push((s, e, Holder::Bpf(what)));
            }
            for (s, e, n) in &b.ksyms {
                out.push((*s, *e, Holder::Bpf(format!("BPF: {n}"))));
            }
            for (s, e, what) in &b.struct_ops {
                out.push((*s, *e, Holder::Bpf(what.clone())));
            }
        }
        Err(e) => r.not_checked.push(format!("BPF JIT memory: {e}")),
    }
    for (s, e) in ftrace_trampolines(k) {
        out.push((s, e, Holder::Ftrace));
    }
    for cache in ["kprobe_insn_slots", "kprobe_optinsn_slots"] {
        let Ok(at) = k.symbol(cache) else { continue };
        let pages = (|| -> Result<Vec<u64>, KernelError> {
            let head = at.wrapping_add(k.profile.offset("kprobe_insn_cache", "pages")?);
            let list = k.profile.offset("kprobe_insn_page", "list")?;
            walk_list(k, head, list, cache)
        })();
        for page in pages.unwrap_or_default() {
            if let Ok(insns) = ptr(k, page, "kprobe_insn_page", "insns") {
                out.push((insns, insns.saturating_add(0x1000), Holder::Kprobes));
            }
        }
    }
    out
}

/// Ftrace ops the kernel keeps outside `ftrace_ops_list` while unused, whose
/// trampolines stay allocated.
const STATIC_OPS: &[&str] = &["kprobe_ftrace_ops", "kprobe_ipmodify_ops", "global_ops"];
/// Ops a walk of the list visits at most.
const MAX_OPS: usize = 1 << 12;

/// `[trampoline, trampoline + trampoline_size)` of every ops on
/// `ftrace_ops_list` and of the kernel's own static ops.
fn ftrace_trampolines(k: &Kernel<'_, '_>) -> Vec<(u64, u64)> {
    let mut ops: Vec<u64> = STATIC_OPS.iter().filter_map(|n| k.symbol(n).ok()).collect();
    if let (Ok(list), Ok(end)) = (k.symbol("ftrace_ops_list"), k.symbol("ftrace_list_end")) {
        let mut at = k.vm.read_u64(list).unwrap_or(0);
        while at != 0 && at != end && !ops.contains(&at) && ops.len() < MAX_OPS {
            ops.push(at);
            at = ptr(k, at, "ftrace_ops", "next").unwrap_or(0);
        }
    }
    ops.iter()
        .filter_map(|&o| {
            let t = ptr(k, o, "ftrace_ops", "trampoline").ok()?;
            let size = crate::plugins::util::uint(k, o, "ftrace_ops", "trampoline_size").ok()?;
            (t != 0 && size > 0 && size <= 0x10_0000).then(|| (t, t + size))
        })
        .collect()
}

/// The holder of the page at `va`: an owner whose memory it touches, else
/// what its bytes are.
fn holder(
    k: &Kernel<'_, '_>,
    va: u64,
    owners: &[(u64, u64, Holder)],
    prefixes: &[Vec<u8>],
) -> Holder {
    if let Some((_, _, h)) = owners.iter().find(|(s, e, _)| *s < va + 0x1000 && *e > va) {
        return h.clone();
    }
    let mut page = vec![0u8; 0x1000];
    if k.vm.read(va, &mut page).is_err() {
        return Holder::Unknown;
    }
    if page.iter().all(|&b| b == 0xcc || b == 0) {
        Holder::Filler
    } else if prefixes.iter().any(|p| page.starts_with(p)) {
        Holder::Ftrace
    } else if its_thunks(&page) {
        Holder::Its
    } else {
        Holder::Unknown
    }
}

pub(crate) fn check(k: &Kernel<'_, '_>, cx: &Context<'_>) -> Result<Report, KernelError> {
    if k.is_aarch64() {
        return Ok(Report {
            not_checked: vec![
                "executable memory in arm64 module space: not walked yet (x86-64 only)".into(),
            ],
            examined: "module space".into(),
            ..Report::default()
        });
    }
    let image_end = k.symbol("_end").or_else(|_| k.symbol("_etext"))?;
    let start = MODULES_VADDR_512M.max(image_end.next_multiple_of(1 << 21));
    let mut r = Report::default();
    let mut unread = 0usize;
    let leaves = exec_leaves(k, start, MODULES_END, &mut unread);
    if unread > 0 {
        r.not_checked.push(format!(
            "{unread} page tables over module space are not in the image"
        ));
    }
    let owners = owned(k, cx, &mut r);
    let prefixes = trampoline_prefixes(k);
    // Runs of pages with one holder.
    let mut runs: Vec<(u64, u64, Holder)> = Vec::new();
    let mut pages = 0usize;
    for (va, size) in leaves {
        let mut at = va.max(start);
        while at < va.saturating_add(size).min(MODULES_END) && pages < MAX_PAGES {
            pages += 1;
            let h = holder(k, at, &owners, &prefixes);
            match runs.last_mut() {
                Some((_, end, last)) if *end == at && *last == h => *end += 0x1000,
                _ => runs.push((at, at + 0x1000, h)),
            }
            at += 0x1000;
        }
    }
    for (s, e, h) in &runs {
        if *h == Holder::Unknown {
            let mut bytes = vec![0u8; 64];
            let first = (*s..*e)
                .step_by(0x1000)
                .find_map(|p| {
                    let mut page = vec![0u8; 0x1000];
                    k.vm.read(p, &mut page).ok()?;
                    let off = page.iter().position(|&b| b != 0 && b != 0xcc)?;
                    Some(p + off as u64)
                })
                .unwrap_or(*s);
            let code = match k.vm.read(first, &mut bytes) {
                Ok(()) => super::malfind::disassemble(k, &bytes, first),
                Err(_) => "unreadable".into(),
            };
            r.findings.push(Finding {
                severity: Severity::High,
                check: "unowned_code",
                what: format!(
                    "executable memory in module space that no module owns ({} pages)",
                    (e - s) / 0x1000
                ),
                evidence: format!("{s:#x}-{e:#x}: at {first:#x}: {code}"),
                owner: h.describe(),
            });
        }
        r.rows.push(Row {
            fields: vec![
                ("start", Value::UInt(*s)),
                ("end", Value::UInt(*e)),
                ("pages", Value::UInt((e - s) / 0x1000)),
                ("owner", Value::Str(h.describe())),
            ],
        });
    }
    r.examined = format!("{pages} executable pages in module space");
    Ok(r)
}

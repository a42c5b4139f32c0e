//! unowned_code: executable memory in module space that nothing known
//! owns. A rootkit that frees or wipes its `struct module` (or never had
//! one: code copied in by an exploit) still needs its code mapped
//! executable somewhere the kernel can call, and that is module space,
//! where every allocation of executable kernel memory goes: on x86-64
//! `MODULES_VADDR`..`MODULES_END`; on arm64 the 2 GiB window around the
//! kernel image that modules must sit in to reach it.
//!
//! The kernel's page tables over that range give every present page that
//! is executable (`memory::executable_leaves`: no NX at any level; no PXN
//! or PXNTable). Each is owned by a module (its
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
use crate::memory::executable_leaves;
use crate::plugins::tasks::walk_list;
use crate::plugins::util::ptr;
use crate::plugins::{Row, Value};

/// x86-64 module space: `MODULES_VADDR` is the kernel image area's end
/// (`__START_KERNEL_map` + 512 MiB, or 1 GiB with KASLR), `MODULES_END` is
/// fixed below the fixmap.
const MODULES_VADDR_512M: u64 = 0xffff_ffff_a000_0000;
const MODULES_END: u64 = 0xffff_ffff_ff00_0000;
/// arm64's module window: the reach of a branch through a PLT.
const ARM64_WINDOW: u64 = 2 << 30;
/// Executable pages looked at, at most (1 GiB of 4 KiB pages, 4 GiB of
/// 16 KiB ones).
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
    for (s, e, _) in ftrace_trampolines(k) {
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
                out.push((
                    insns,
                    insns.saturating_add(k.mode.page_size()),
                    Holder::Kprobes,
                ));
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
/// Every trampoline an ftrace ops holds: `(start, end, ops)`.
fn ftrace_trampolines(k: &Kernel<'_, '_>) -> Vec<(u64, u64, u64)> {
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
            (t != 0 && size > 0 && size <= 0x10_0000).then(|| (t, t + size, o))
        })
        .collect()
}

/// The ftrace ops whose trampoline holds `addr`, and the ops' callback:
/// who a traced function's ftrace site really calls.
pub(super) fn ftrace_ops_at(k: &Kernel<'_, '_>, addr: u64) -> Option<(u64, u64)> {
    let (_, _, ops) = ftrace_trampolines(k)
        .into_iter()
        .find(|&(s, e, _)| addr >= s && addr < e)?;
    Some((ops, ptr(k, ops, "ftrace_ops", "func").ok()?))
}

/// The BPF image (a program, trampoline or dispatcher on `bpf_kallsyms`)
/// that holds `addr`, by name.
pub(super) fn bpf_image_at(k: &Kernel<'_, '_>, cx: &Context<'_>, addr: u64) -> Option<String> {
    let b = cx.bpf(k).ok()?;
    b.ksyms
        .iter()
        .find(|(s, e, _)| addr >= *s && addr < *e)
        .map(|(_, _, n)| n.clone())
}

/// The holder of the page at `va`: an owner whose memory it touches, else
/// what its bytes are.
fn holder(
    k: &Kernel<'_, '_>,
    va: u64,
    owners: &[(u64, u64, Holder)],
    prefixes: &[Vec<u8>],
) -> Holder {
    let size = k.mode.page_size();
    if let Some((_, _, h)) = owners.iter().find(|(s, e, _)| *s < va + size && *e > va) {
        return h.clone();
    }
    let mut page = vec![0u8; usize::try_from(size).unwrap_or(0x1000)];
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

/// Where modules (and BPF images, kprobe slots, trampolines) live: on
/// x86-64 between the kernel image area and the fixmap; on arm64 a 2 GiB
/// window that holds the kernel image (random with KASLR, below the image
/// without), so the 2 GiB on each side of the image, less the image.
fn module_space(k: &Kernel<'_, '_>) -> Result<Vec<(u64, u64)>, KernelError> {
    let image_end = k.symbol("_end").or_else(|_| k.symbol("_etext"))?;
    if k.is_aarch64() {
        let text = k.symbol("_text")?;
        let upper = k.mode.upper_half();
        return Ok(vec![
            (image_end.saturating_sub(ARM64_WINDOW).max(upper), text),
            (image_end, text.saturating_add(ARM64_WINDOW)),
        ]);
    }
    let start = MODULES_VADDR_512M.max(image_end.next_multiple_of(1 << 21));
    Ok(vec![(start, MODULES_END)])
}

pub(crate) fn check(k: &Kernel<'_, '_>, cx: &Context<'_>) -> Result<Report, KernelError> {
    let mut r = Report::default();
    let mut unread = 0usize;
    let mut leaves = Vec::new();
    for (start, end) in module_space(k)? {
        for leaf in executable_leaves(k.phys, k.mode, k.dtb, start, end, MAX_PAGES, &mut unread) {
            let from = leaf.va.max(start);
            leaves.push((from, leaf.va.saturating_add(leaf.size).min(end)));
        }
    }
    if unread > 0 {
        r.not_checked.push(format!(
            "{unread} page tables over module space are not in the image"
        ));
    }
    let owners = owned(k, cx, &mut r);
    let prefixes = trampoline_prefixes(k);
    // Runs of pages (of the kernel's page size) with one holder.
    let size = k.mode.page_size();
    let mut runs: Vec<(u64, u64, Holder)> = Vec::new();
    let mut pages = 0usize;
    for (from, to) in leaves {
        let mut at = from;
        while at < to && pages < MAX_PAGES {
            pages += 1;
            let h = holder(k, at, &owners, &prefixes);
            match runs.last_mut() {
                Some((_, end, last)) if *end == at && *last == h => *end += size,
                _ => runs.push((at, at + size, h)),
            }
            at += size;
        }
    }
    for (s, e, h) in &runs {
        if *h == Holder::Unknown {
            let mut bytes = vec![0u8; 64];
            let first = (*s..*e)
                .step_by(usize::try_from(size).unwrap_or(0x1000))
                .find_map(|p| {
                    let mut page = vec![0u8; usize::try_from(size).unwrap_or(0x1000)];
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
                    (e - s) / size
                ),
                evidence: format!("{s:#x}-{e:#x}: at {first:#x}: {code}"),
                owner: h.describe(),
            });
        }
        r.rows.push(Row {
            fields: vec![
                ("start", Value::UInt(*s)),
                ("end", Value::UInt(*e)),
                ("pages", Value::UInt((e - s) / size)),
                ("owner", Value::Str(h.describe())),
            ],
        });
    }
    r.examined = format!("{pages} executable pages in module space");
    Ok(r)
}

//! Kernel-integrity and rootkit checks, and the triage verdict built on
//! them.
//!
//! Every check answers with rows (what it looked at), findings (what is
//! wrong, named by its owner) and "not checked" reasons (what it could not
//! look at on this kernel or profile). A missing symbol or an unreadable
//! page is never read as "nothing found": triage lists it.
//!
//! Owners come from [`Context`]: kernel text by its symbols, module memory
//! by the module that holds it, whether the module list shows that module
//! or only carving or sysfs found it.

mod bpf;
mod bpf_attach;
mod bpf_events;
mod bpf_filters;
mod bpf_holders;
mod bpf_names;
mod classic_bpf;
mod creds;
mod dispatch;
mod ebpf;
mod entry;
mod hooks;
mod kmsg;
mod malfind;
mod modspace;
mod modules;
mod ops;
mod psscan;
mod spoofing;
mod syscall;
mod syscall_names;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_checks;
#[cfg(test)]
mod tests_tracing;
mod tracepoints;
mod tracing;
mod triage;
mod xarray;

pub(crate) use modules::Inventory;
pub use triage::Verdict;

use super::Row;
use crate::kernel::{Kernel, KernelError};

/// How much a finding weighs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Severity {
    High,
    Medium,
}

impl Severity {
    fn name(self) -> &'static str {
        match self {
            Severity::High => "high",
            Severity::Medium => "medium",
        }
    }
}

/// One thing a check found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Finding {
    pub severity: Severity,
    pub check: &'static str,
    pub what: String,
    pub evidence: String,
    pub owner: String,
}

/// What one check produced.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub rows: Vec<Row>,
    pub findings: Vec<Finding>,
    /// Parts the check could not look at, each with the reason.
    pub not_checked: Vec<String>,
    /// What it looked at, for a reader who sees no findings.
    pub examined: String,
    /// Why the check has nothing to look at on this architecture.
    pub not_applicable: Option<String>,
}

/// The integrity plugins, in the order triage runs them.
pub const CHECKS: &[&str] = &[
    "check_modules",
    "hidden_modules",
    "check_syscall",
    "check_idt",
    "check_afinfo",
    "tty_check",
    "keyboard_notifiers",
    "netfilter",
    "check_creds",
    "ftrace",
    "kprobes",
    "tracepoints",
    "ebpf",
    "bpf_filters",
    "unowned_code",
    "psscan",
    "process_spoofing",
    "malfind",
    "kmsg",
];

/// Volatility 3's names for the same checks.
pub const ALIASES: &[(&str, &str)] = &[
    ("linux.malware.check_syscall", "check_syscall"),
    ("linux.malware.hidden_modules", "hidden_modules"),
    ("linux.malware.check_modules", "check_modules"),
    ("linux.malware.modxview", "modxview"),
    ("linux.malware.check_idt", "check_idt"),
    ("linux.malware.keyboard_notifiers", "keyboard_notifiers"),
    ("linux.malware.netfilter", "netfilter"),
    ("linux.malware.check_creds", "check_creds"),
    ("linux.malware.malfind", "malfind"),
    ("linux.tracing.ftrace", "ftrace"),
    ("linux.tracing.tracepoints", "tracepoints"),
    ("linux.ebpf.EBPF", "ebpf"),
    ("linux.ebpf", "ebpf"),
    ("linux.malware.check_afinfo", "check_afinfo"),
    ("linux.malware.tty_check", "tty_check"),
    ("linux.kmsg", "kmsg"),
    ("linux.psscan", "psscan"),
    ("linux.malware.process_spoofing", "process_spoofing"),
    // Not a check, but Volatility's name is accepted all the same.
    ("linux.lsof", "lsof"),
];

/// The kernel's symbols by runtime address, for naming code addresses.
#[derive(Debug)]
pub(crate) struct Symbols<'k> {
    by_addr: Vec<(u64, &'k str)>,
    /// `_stext`..`_etext` and `_sinittext`..`_einittext`, runtime. Init
    /// text is freed after boot, but unused IDT vectors still point there.
    text: Vec<(u64, u64)>,
}

impl<'k> Symbols<'k> {
    pub(crate) fn new(k: &'k Kernel<'_, '_>) -> Result<Self, KernelError> {
        let mut text = vec![(k.symbol("_stext")?, k.symbol("_etext")?)];
        if let (Ok(s), Ok(e)) = (k.symbol("_sinittext"), k.symbol("_einittext")) {
            text.push((s, e));
        }
        let in_text = |a: u64| text.iter().any(|&(s, e)| a >= s && a < e);
        let mut by_addr: Vec<(u64, &str)> = k
            .profile
            .symbols
            .iter()
            .map(|(n, s)| (s.address.wrapping_add(k.aslr_shift), n.as_str()))
            .filter(|(a, _)| in_text(*a))
            .collect();
        // Among aliases, the `__pfx_`/`__cfi_` padding names lose.
        by_addr.sort_unstable_by_key(|(a, n)| (*a, n.starts_with("__pfx_"), n.len()));
        Ok(Symbols { by_addr, text })
    }

    pub(crate) fn in_text(&self, addr: u64) -> bool {
        self.text.iter().any(|&(s, e)| addr >= s && addr < e)
    }

    /// The symbol at or below `addr` in kernel text, with the offset.
    pub(crate) fn name(&self, addr: u64) -> Option<(&'k str, u64)> {
        if !self.in_text(addr) {
            return None;
        }
        let i = self.by_addr.partition_point(|(a, _)| *a <= addr);
        let (a, _) = *self.by_addr.get(i.checked_sub(1)?)?;
        // The first name of that address (sorted preferred first).
        let first = self.by_addr.partition_point(|(x, _)| *x < a);
        self.by_addr.get(first).map(|(a, n)| (*n, addr - a))
    }

    /// `symbol` or `symbol+0xOFF` for an address in kernel text, else `-`.
    pub(crate) fn text(&self, addr: u64) -> String {
        match self.name(addr) {
            Some((n, 0)) => n.to_string(),
            Some((n, off)) => format!("{n}+{off:#x}"),
            None => "-".into(),
        }
    }

    /// The next symbol address after `addr` (a function's end bound).
    pub(crate) fn next_after(&self, addr: u64) -> Option<u64> {
        let i = self.by_addr.partition_point(|(a, _)| *a <= addr);
        self.by_addr.get(i).map(|(a, _)| *a)
    }
}

/// Who owns an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Owner {
    /// Kernel text: the symbol and offset, when one is known.
    Kernel(Option<(String, u64)>),
    /// A module's memory; `hidden` when the module list does not show it.
    Module { name: String, hidden: bool },
    /// Neither kernel text nor any module found.
    Unknown,
}

impl Owner {
    pub(crate) fn describe(&self) -> String {
        match self {
            Owner::Kernel(Some((s, 0))) => format!("kernel: {s}"),
            Owner::Kernel(Some((s, off))) => format!("kernel: {s}+{off:#x}"),
            Owner::Kernel(None) => "kernel".into(),
            Owner::Module {
                name,
                hidden: false,
            } => format!("module {name}"),
            Owner::Module { name, hidden: true } => format!("hidden module {name}"),
            Owner::Unknown => "unknown (no module owns it)".into(),
        }
    }

    /// The kernel symbol (`name+0xOFF`) as a row value; `-` outside the kernel.
    pub(crate) fn symbol(&self) -> super::Value {
        super::Value::Str(match self {
            Owner::Kernel(Some((s, 0))) => s.clone(),
            Owner::Kernel(Some((s, off))) => format!("{s}+{off:#x}"),
            _ => "-".into(),
        })
    }

    pub(crate) fn is_kernel(&self) -> bool {
        matches!(self, Owner::Kernel(_))
    }
}

/// What every check shares: symbols, the module inventory and, read when
/// a check first asks, the eBPF objects.
pub(crate) struct Context<'k> {
    pub symbols: Result<Symbols<'k>, KernelError>,
    pub modules: Result<Inventory, KernelError>,
    bpf: std::cell::OnceCell<Result<bpf::Bpf, KernelError>>,
}

impl<'k> Context<'k> {
    pub(crate) fn new(k: &'k Kernel<'_, '_>) -> Self {
        Context {
            symbols: Symbols::new(k),
            modules: Inventory::gather(k),
            bpf: std::cell::OnceCell::new(),
        }
    }

    /// The eBPF programs, links and JIT memory (read once).
    pub(crate) fn bpf(&self, k: &Kernel<'_, '_>) -> Result<&bpf::Bpf, KernelError> {
        self.bpf
            .get_or_init(|| bpf::Bpf::gather(k, self.symbols.as_ref().ok()))
            .as_ref()
            .map_err(Clone::clone)
    }

    pub(crate) fn owner(&self, addr: u64) -> Owner {
        if let Ok(s) = &self.symbols
            && s.in_text(addr)
        {
            return Owner::Kernel(s.name(addr).map(|(n, o)| (n.to_string(), o)));
        }
        if let Ok(inv) = &self.modules
            && let Some(m) = inv.owner_of(addr)
        {
            return Owner::Module {
                name: m.name.clone(),
                hidden: !m.in_list,
            };
        }
        Owner::Unknown
    }

    /// The symbols, or the reason they are missing as a kernel error.
    pub(crate) fn syms(&self) -> Result<&Symbols<'k>, KernelError> {
        self.symbols.as_ref().map_err(Clone::clone)
    }

    pub(crate) fn inventory(&self) -> Result<&Inventory, KernelError> {
        self.modules.as_ref().map_err(Clone::clone)
    }
}

/// Runs one integrity check by name.
/// Reads code that a check judges. On a running kernel (a live source) it
/// is read twice, the second time past the cache, and copies that differ
/// are an error: the verdict must not rest on a torn read.
pub(crate) fn read_judged(k: &Kernel<'_, '_>, va: u64, buf: &mut [u8]) -> Result<(), String> {
    k.vm.read(va, buf).map_err(|e| e.to_string())?;
    if k.phys.format() != crate::ImageFormat::Live {
        return Ok(());
    }
    let mut again = vec![0u8; buf.len()];
    let mut done = 0usize;
    while done < buf.len() {
        let at = va.wrapping_add(done as u64);
        let in_page = (0x1000 - (at & 0xfff)) as usize;
        let n = in_page.min(buf.len() - done);
        let pa = k.vm.translate(at).map_err(|e| e.to_string())?;
        let dst = again.get_mut(done..done + n).ok_or("out of range")?;
        k.phys.read_fresh(pa, dst).map_err(|e| e.to_string())?;
        done += n;
    }
    if again != buf {
        return Err("it changed while it was read: two reads of the running kernel differ".into());
    }
    Ok(())
}

pub(crate) fn run_check(
    name: &str,
    k: &Kernel<'_, '_>,
    cx: &Context<'_>,
) -> Option<Result<Report, KernelError>> {
    Some(match name {
        "check_modules" => modules::check_modules(k, cx),
        "hidden_modules" => modules::hidden_modules(k, cx),
        "modxview" => modules::modxview(k, cx),
        "check_syscall" => syscall::check(k, cx),
        "check_idt" => hooks::check_idt(k, cx),
        "keyboard_notifiers" => hooks::keyboard_notifiers(k, cx),
        "netfilter" => hooks::netfilter(k, cx),
        "check_creds" => creds::check(k, cx),
        "malfind" => malfind::check(k, cx),
        "ftrace" => tracing::ftrace(k, cx),
        "kprobes" => tracing::kprobes(k, cx),
        "tracepoints" => tracepoints::check(k, cx),
        "ebpf" => ebpf::check(k, cx),
        "bpf_filters" => bpf_filters::check(k, cx),
        "unowned_code" => modspace::check(k, cx),
        "check_afinfo" => ops::check_afinfo(k, cx),
        "tty_check" => ops::tty_check(k, cx),
        "kmsg" => kmsg::check(k, cx),
        "psscan" => psscan::check(k, cx),
        "process_spoofing" => spoofing::check(k, cx),
        _ => return None,
    })
}

/// Rows of a check run on its own: its rows, then its findings and what it
/// could not check as rows of their own kind, so that nothing is dropped.
pub(crate) fn plugin_rows(name: &str, k: &Kernel<'_, '_>) -> Option<Result<Vec<Row>, KernelError>> {
    if name == "triage" {
        return Some(triage::run(k));
    }
    let cx = Context::new(k);
    let report = run_check(name, k, &cx)?;
    Some(report.map(|r| {
        if let Some(why) = &r.not_applicable {
            k.note(format!("{name}: does not apply: {why}"));
        }
        for n in &r.not_checked {
            k.note(format!("{name}: not checked: {n}"));
        }
        r.rows
    }))
}

//! The built-in plugins, a closed list: `banner`, `pslist`, `pstree`,
//! `psaux`, `lsmod`, `netstat`, `maps`, `memdump`, `envars`, `bash`,
//! `lsof`, and the integrity checks. Each returns rows of named values; the caller picks
//! the output format (the core derives no serde, so output stays a
//! decision of the CLI).
//!
//! Semantics follow Volatility 3's plugins so that results compare row for
//! row: PID is the thread-group id, TID the task's pid, PPID the parent's
//! tgid, kernel threads print as `[comm]` in psaux.

mod banner;
mod bash;
mod envars;
pub mod integrity;
mod lsmod;
mod lsof;
mod maps;
pub mod memdump;
mod netstat;
mod psaux;
mod pslist;
mod pstree;
mod tasks;
mod util;
mod vfs;
mod vma;

#[cfg(test)]
mod tests;

use crate::format::PhysicalMemory;
use crate::kernel::{Kernel, KernelError};

/// One value in a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Int(i64),
    UInt(u64),
    Str(String),
    /// The value could not be read (e.g. a paged-out command line).
    Null,
}

/// One output row: named values in column order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub fields: Vec<(&'static str, Value)>,
}

impl Row {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

/// Plugin options (no `Default`: callers say what they want).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Include threads, not only thread-group leaders (pslist, pstree).
    pub threads: bool,
}

/// Names of the built-in plugins.
pub const PLUGINS: &[&str] = &[
    "banner",
    "pslist",
    "pstree",
    "psaux",
    "lsmod",
    "netstat",
    "maps",
    "memdump",
    "envars",
    "bash",
    "lsof",
    "triage",
    "check_syscall",
    "hidden_modules",
    "check_modules",
    "modxview",
    "check_idt",
    "keyboard_notifiers",
    "netfilter",
    "check_creds",
    "ftrace",
    "kprobes",
    "tracepoints",
    "ebpf",
    "bpf_filters",
    "unowned_code",
    "malfind",
    "check_afinfo",
    "tty_check",
    "kmsg",
    "psscan",
    "process_spoofing",
];

/// True for the integrity checks (and triage): they need every symbol of
/// the profile ([`crate::profile::Selection::INTEGRITY`]).
pub fn is_integrity(name: &str) -> bool {
    name == "triage" || name == "modxview" || integrity::CHECKS.contains(&name)
}

/// A plugin's canonical name: Volatility 3's names are accepted too.
pub fn canonical(name: &str) -> &str {
    integrity::ALIASES
        .iter()
        .find(|(alias, _)| *alias == name)
        .map_or(name, |(_, n)| n)
}

const PLUGIN_TYPES: &[&str] = crate::profile::PLUGIN_TYPES;
const EXTRA_INTEGRITY_TYPES: &[&str] = &[
    "kset",
    "kobject",
    "module_kobject",
    "mod_tree_root",
    "atomic_notifier_head",
    "notifier_block",
    "netns_nf",
    "nf_hook_entries",
    "nf_hook_entry",
    "ftrace_ops",
    "ftrace_ops_hash",
    "ftrace_hash",
    "ftrace_func_entry",
    "kprobe",
    "kretprobe",
    "trace_kprobe",
    "trace_probe",
    "trace_probe_event",
    "trace_uprobe",
    "uprobe",
    "uprobe_consumer",
    "tracepoint",
    "tracepoint_func",
    // ebpf: programs, links and what they attach to, the JIT's memory.
    "bpf_prog",
    "bpf_prog_aux",
    "bpf_ksym",
    "bpf_prog_pack",
    "bpf_map",
    "bpf_struct_ops_map",
    "bpf_link",
    "bpf_raw_tp_link",
    "bpf_raw_event_map",
    "bpf_tracing_link",
    "bpf_tramp_link",
    "bpf_cgroup_link",
    "cgroup",
    "kernfs_node",
    "bpf_netns_link",
    "bpf_xdp_link",
    "tcx_link",
    "netkit_link",
    "net_device",
    "bpf_perf_link",
    "perf_event",
    "trace_event_call",
    // ebpf: the hooks programs attach to without a link.
    "cgroup_root",
    "cgroup_subsys_state",
    "cgroup_bpf",
    "bpf_prog_list",
    "bpf_prog_array",
    "bpf_prog_array_item",
    "netns_bpf",
    "bpf_xdp_entity",
    "bpf_mprog_entry",
    "bpf_mprog_fp",
    "bpf_mprog_cp",
    "bpf_mprog_bundle",
    "tcx_entry",
    "mini_Qdisc",
    "tcf_proto",
    "tcf_proto_ops",
    "sk_filter",
    // Classic BPF: socket and seccomp filters.
    "seccomp",
    "seccomp_filter",
    "sock_fprog_kern",
    // mod_tree, and module space's other code (kprobe instruction slots).
    "latch_tree_root",
    "latch_tree_node",
    "rb_root",
    "rb_node",
    "mod_tree_node",
    "kprobe_insn_cache",
    "kprobe_insn_page",
    // check_afinfo, tty_check.
    "seq_operations",
    "tcp_seq_afinfo",
    "tty_driver",
    "tty_struct",
    "tty_ldisc",
    "tty_ldisc_ops",
    // kmsg: the lockless printk ring buffer.
    "printk_ringbuffer",
    "prb_desc_ring",
    "prb_data_ring",
    "prb_desc",
    "printk_info",
    "dev_printk_info",
    // psscan: the PID table.
    "pid_namespace",
    "idr",
    "xarray",
    "xa_node",
    "pid",
];

// Indexing in a const fn: an out-of-bounds index fails the build, not a run.
#[allow(clippy::indexing_slicing)]
const fn concat<const N: usize>(a: &[&'static str], b: &[&'static str]) -> [&'static str; N] {
    let mut out = [""; N];
    let mut i = 0;
    while i < a.len() {
        out[i] = a[i];
        i += 1;
    }
    let mut j = 0;
    while j < b.len() {
        out[i + j] = b[j];
        j += 1;
    }
    out
}

const INTEGRITY_TYPES_ARRAY: [&str; PLUGIN_TYPES.len() + EXTRA_INTEGRITY_TYPES.len()] =
    concat(PLUGIN_TYPES, EXTRA_INTEGRITY_TYPES);

/// The types the integrity checks read: the plugins' and their own.
pub const INTEGRITY_TYPES: &[&str] = &INTEGRITY_TYPES_ARRAY;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PluginError {
    #[error(
        "unknown plugin \"{0}\": expected one of {list}",
        list = PLUGINS.join(", ")
    )]
    Unknown(String),
    // The message carries the cause, so it is not the error's source as
    // well: `{:#}` would print it twice.
    #[error("plugin {plugin}: {cause}")]
    Kernel {
        plugin: &'static str,
        cause: KernelError,
    },
}

/// When the machine booted (ns since the Unix epoch), if the profile and
/// image tell; process start times are measured from it.
pub fn boot_time_ns(kernel: &Kernel<'_, '_>) -> Option<i128> {
    tasks::boot_time_ns(kernel)
}

/// True when the plugin needs a located kernel (and so a profile).
pub fn needs_kernel(name: &str) -> bool {
    name != "banner"
}

/// Runs `banner`, which needs no profile: every Linux banner in the image.
pub fn run_banner(phys: &PhysicalMemory<'_>) -> Result<Vec<Row>, PluginError> {
    banner::run(phys).map_err(|cause| PluginError::Kernel {
        plugin: "banner",
        cause,
    })
}

/// Runs one plugin against a located kernel.
pub fn run_plugin(
    name: &str,
    kernel: &Kernel<'_, '_>,
    opts: &Options,
) -> Result<Vec<Row>, PluginError> {
    let (plugin, res) = match name {
        "banner" => ("banner", banner::run(kernel.phys)),
        "pslist" => ("pslist", pslist::run(kernel, opts)),
        "pstree" => ("pstree", pstree::run(kernel, opts)),
        "psaux" => ("psaux", psaux::run(kernel)),
        "lsmod" => ("lsmod", lsmod::run(kernel)),
        "netstat" => ("netstat", netstat::run(kernel)),
        "maps" => ("maps", maps::run(kernel)),
        "memdump" => ("memdump", memdump::run(kernel)),
        "envars" => ("envars", envars::run(kernel)),
        "bash" => ("bash", bash::run(kernel)),
        "lsof" => ("lsof", lsof::run(kernel)),
        other => match integrity::plugin_rows(canonical(other), kernel) {
            Some(res) => ("integrity", res),
            None => return Err(PluginError::Unknown(other.to_string())),
        },
    };
    res.map_err(|cause| PluginError::Kernel { plugin, cause })
}

//! The built-in plugins, a closed list: `banner`, `pslist`, `pstree`,
//! `psaux`, `lsmod`, `netstat`, `maps`, `memdump`, `envars`, `bash`. Each returns rows of named values; the caller picks
//! the output format (the core derives no serde, so output stays a
//! decision of the CLI).
//!
//! Semantics follow Volatility 3's plugins so that results compare row for
//! row: PID is the thread-group id, TID the task's pid, PPID the parent's
//! tgid, kernel threads print as `[comm]` in psaux.

mod banner;
mod bash;
mod envars;
mod lsmod;
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
    "banner", "pslist", "pstree", "psaux", "lsmod", "netstat", "maps", "memdump", "envars", "bash",
];

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PluginError {
    #[error(
        "unknown plugin \"{0}\": expected one of banner, pslist, pstree, psaux, lsmod, netstat, maps, memdump, envars, bash"
    )]
    Unknown(String),
    #[error("plugin {plugin}: {source}")]
    Kernel {
        plugin: &'static str,
        #[source]
        source: KernelError,
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
    banner::run(phys).map_err(|source| PluginError::Kernel {
        plugin: "banner",
        source,
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
        other => return Err(PluginError::Unknown(other.to_string())),
    };
    res.map_err(|source| PluginError::Kernel { plugin, source })
}

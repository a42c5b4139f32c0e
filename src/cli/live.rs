//! Flags of `mshot live`.

use std::path::PathBuf;

use super::{ConnectionArgs, OutputFormat};

/// Arguments of `mshot live`.
#[derive(Debug, Clone, clap::Args)]
pub struct LiveArgs {
    #[command(flatten)]
    pub conn: ConnectionArgs,
    /// Plugins to run on the running host (commas allowed): pslist, pstree,
    /// psaux, lsmod, netstat, maps, envars, bash, lsof, triage and the
    /// integrity checks, and banner (the running kernel's). memdump needs a
    /// capture.
    #[arg(required = true, value_delimiter = ',')]
    pub plugins: Vec<String>,
    /// Output format (the same document as `mshot analyze`).
    #[arg(long, value_enum, default_value = "table")]
    pub format: OutputFormat,
    /// Include threads in pslist/pstree.
    #[arg(long)]
    pub threads: bool,
    /// Only these processes (thread-group ids; commas allowed).
    #[arg(long, value_delimiter = ',')]
    pub pid: Vec<i64>,
    /// Seconds each plugin may read the host's memory for.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub plugin_timeout: u64,
    /// Where the record of the run goes: HOST-TIMESTAMP-live.json, with
    /// every remote command and what was read [default: the current directory].
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Cache of kernel BTF by build ID (default: ~/.cache/mshot/material).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Fetch the BTF every time.
    #[arg(long)]
    pub no_cache: bool,
    /// Say each step on stderr (-vv debug, -vvv trace); by default only warnings.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

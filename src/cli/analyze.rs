//! Flags of `mshot analyze`.

use std::path::PathBuf;

/// Output format of `mshot analyze`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

/// Arguments of `mshot analyze`.
#[derive(Debug, Clone, clap::Args)]
pub struct AnalyzeArgs {
    /// Memory image: LiME, AVML (compressed LiME) or raw.
    pub image: PathBuf,
    /// Plugins to run: banner, pslist, pstree, psaux, lsmod, netstat, maps,
    /// memdump, envars, bash, lsof, triage and the integrity checks (commas
    /// allowed).
    #[arg(required = true, value_delimiter = ',')]
    pub plugins: Vec<String>,
    /// Profile file (Volatility 3 ISF or Rekall JSON; .json/.json.xz/.json.gz)
    /// or a directory of them, chosen by matching the image's banner.
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: OutputFormat,
    /// Include threads in pslist/pstree.
    #[arg(long)]
    pub threads: bool,
    /// Only these processes (thread-group ids; commas allowed). Filters the
    /// rows of every plugin and picks what memdump dumps.
    #[arg(long, value_delimiter = ',')]
    pub pid: Vec<i64>,
    /// Where memdump writes one file per region plus memdump.json.
    #[arg(long)]
    pub dump_dir: Option<PathBuf>,
    /// Also write each plugin's rows as NAME.<plugin>.json into this directory.
    #[arg(long)]
    pub output_json_dir: Option<PathBuf>,
    /// Profile cache directory (default: ~/.cache/mshot/profiles).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Do not read or write the profile cache.
    #[arg(long)]
    pub no_cache: bool,
}

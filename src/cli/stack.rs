//! Flags of `mshot stack`.

use std::path::PathBuf;

use super::OutputFormat;

/// Arguments of `mshot stack`.
#[derive(Debug, Clone, clap::Args)]
pub struct StackArgs {
    /// Memory images of several hosts (each with its material, or --profile).
    #[arg(required = true, num_args = 2..)]
    pub images: Vec<PathBuf>,
    /// Plugins whose rows are stacked (commas allowed).
    #[arg(long, value_delimiter = ',', default_value = "pslist,lsmod,netstat")]
    pub plugins: Vec<String>,
    /// Profile file or directory, for images without capture material.
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: OutputFormat,
}

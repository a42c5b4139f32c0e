//! Flags of `mshot profile`.

use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct ProfileArgs {
    #[command(subcommand)]
    pub command: ProfileCommand,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ProfileCommand {
    /// Write the profile built from a capture's material (BTF + kallsyms):
    /// mshot profile export IMAGE_OR_MATERIAL_DIR -o FILE.json.xz
    Export(ExportArgs),
    /// Build a profile from a kernel's debug vmlinux (Debian's
    /// linux-image-RELEASE-dbg package): types from its .BTF section,
    /// link-time addresses from its symbol table; no dwarf2json needed.
    /// mshot profile build --vmlinux usr/lib/debug/boot/vmlinux-RELEASE -o FILE.json.xz
    Build(BuildArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct BuildArgs {
    /// The kernel's debug vmlinux (ELF, with .BTF and a symbol table).
    #[arg(long, value_name = "FILE")]
    pub vmlinux: PathBuf,
    #[command(flatten)]
    pub out: ProfileOutput,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// Volatility 3 Intermediate Symbol Format (6.2.0).
    Isf,
    /// Rekall JSON profile.
    Rekall,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// A memory image with its NAME.material/ directory beside it, or that directory.
    pub input: PathBuf,
    #[command(flatten)]
    pub out: ProfileOutput,
}

/// Where and how `mshot profile` writes a profile.
#[derive(Debug, Clone, clap::Args)]
pub struct ProfileOutput {
    /// Output format.
    #[arg(long, value_enum, default_value = "isf")]
    pub format: ExportFormat,
    /// Output file; .json.xz and .json.gz are compressed, anything else is plain JSON.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Replace the output file if it exists.
    #[arg(long)]
    pub force: bool,
}

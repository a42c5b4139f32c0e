//! Flags of `mshot repo`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Args, Debug, Clone)]
pub struct RepoArgs {
    #[command(subcommand)]
    pub command: RepoCommand,
}

#[derive(Subcommand, Debug, Clone)]
pub enum RepoCommand {
    /// Build LiME for kernel releases from Debian's lime-forensics-dkms and
    /// linux-headers-RELEASE (no kernel is installed), into REPO/modules/ARCH/.
    Build {
        /// Repository directory to put the modules in.
        #[arg(long, value_name = "REPO")]
        out: PathBuf,
        /// Scratch directory (downloaded .debs, unpacked headers).
        #[arg(long, value_name = "DIR")]
        work: Option<PathBuf>,
        /// Build against this kernel build tree instead of a Debian headers
        /// package (one release; for Ubuntu, Amazon Linux, RHEL headers).
        #[arg(long, value_name = "DIR")]
        headers: Option<PathBuf>,
        /// Architecture to build for (as `uname -m` prints it); aarch64 is
        /// cross-built on an x86-64 machine, no emulation needed. Default:
        /// this machine's.
        #[arg(long, value_name = "ARCH", value_parser = ["x86_64", "aarch64"])]
        arch: Option<String>,
        /// Kernel releases as the targets' `uname -r` prints them.
        #[arg(required = true, value_name = "RELEASE")]
        releases: Vec<String>,
    },
    /// Write REPO/manifest.json listing every REPO/modules/**/*.ko (removes the
    /// now stale signature: sign again).
    Index {
        #[arg(value_name = "REPO")]
        repo: PathBuf,
        /// A line describing the repository, kept in the manifest.
        #[arg(long)]
        description: Option<String>,
    },
    /// Sign REPO/manifest.json with a minisign secret key (writes
    /// manifest.json.minisig), after checking every module it lists.
    Sign {
        #[arg(value_name = "REPO")]
        repo: PathBuf,
        /// minisign secret key file; an encrypted key's password comes from
        /// MSHOT_REPOSITORY_KEY_PASSWORD or a prompt.
        #[arg(long, value_name = "FILE")]
        secret_key: PathBuf,
    },
    /// Make a minisign key pair for signing a repository.
    Keygen {
        #[arg(long, value_name = "FILE")]
        secret_key: PathBuf,
        #[arg(long, value_name = "FILE")]
        public_key: PathBuf,
        /// Do not protect the secret key with a password (for automation; keep
        /// the file safe some other way).
        #[arg(long)]
        unencrypted: bool,
    },
    /// Check a repository as a capture would: the manifest's signature, then
    /// every module's size and SHA-256.
    Verify {
        /// http(s):// URL, file:// URL or directory.
        #[arg(value_name = "URL|PATH")]
        repository: String,
        /// minisign public key (RW...) or key file (default: the built-in key).
        #[arg(long, value_name = "KEY|FILE", env = crate::repository::ENV_REPOSITORY_KEY)]
        repository_key: Option<String>,
    },
}

//! Command-line flags: what the user typed, checked for shape only (ripgrep's
//! "low args"). `config` turns them into a validated `CaptureJob`.
//!
//! MargaritaShotgun's flag names are kept (`--username`, `--jump-server`,
//! `--filename`, `--output-dir`, `--log-dir`, ...) so its users can switch.

mod analyze;
mod live;
mod profile;
mod repo;
mod stack;

pub use analyze::{AnalyzeArgs, OutputFormat};
pub use live::LiveArgs;
pub use profile::{
    BuildArgs, ExportArgs, ExportFormat, ProfileArgs, ProfileCommand, ProfileOutput,
};
pub use repo::{RepoArgs, RepoCommand};
pub use stack::StackArgs;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "mshot",
    version,
    about = "Capture the memory of remote Linux machines over SSH with LiME, and analyse it",
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  mshot --server 10.0.0.5 --user admin --key ~/.ssh/id_ed25519 --module lime-6.1.0-56-amd64.ko\n  mshot --server 10.0.8.9 --user ec2-user --key id_rsa -J ops@bastion:2222 --module lime.ko --output-dir /cases/42\n  MSHOT_SUDO_PASSWORD=... mshot --server db1 --user alice --sudo-password --module lime.ko --dry-run"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub capture: CaptureArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Capture one host (the default when no subcommand is given).
    Capture(CaptureArgs),
    /// Analyse a memory image offline: mshot analyze IMAGE pstree [psaux ...] [--profile PATH].
    Analyze(AnalyzeArgs),
    /// Analyse a running host without capturing it: plugins read its
    /// /proc/kcore over SSH; nothing is pushed or written there:
    /// mshot live --server HOST --user U --key K pslist netstat [--format json].
    Live(LiveArgs),
    /// Several captures side by side: the processes, modules, listeners and
    /// findings only a few of them have: mshot stack IMAGE IMAGE... [--plugins P,...].
    Stack(StackArgs),
    /// Profiles from capture material: mshot profile export IMAGE -o FILE.json.xz.
    Profile(ProfileArgs),
    /// Build, index, sign and verify a LiME module repository (kernel-modules/README.md).
    Repo(RepoArgs),
    /// Upload an image captured to disk earlier, with its manifest:
    /// mshot upload IMAGE --bucket B [--prefix P ...].
    Upload(UploadArgs),
    /// Benchmark aid: stream a LiME-format TCP source on the target (HOST:PORT as the
    /// target sees it) through the capture path into --output-dir/--filename.
    #[command(hide = true)]
    BenchReceive {
        #[command(flatten)]
        capture: CaptureArgs,
        /// Port of the LiME-format source, as seen from the target.
        #[arg(long)]
        source_port: u16,
    },
}

#[derive(Args, Debug, Clone)]
pub struct CaptureArgs {
    #[command(flatten)]
    pub conn: ConnectionArgs,

    /// LiME kernel module built for the target's kernel (wins over any repository).
    #[arg(long, value_name = "FILE")]
    pub module: Option<PathBuf>,

    /// Take the LiME module for the target's kernel from the module repository
    /// (--repository-url, else `repository.url` in the settings file
    /// ~/.config/mshot/config.yaml or $MSHOT_CONFIG, else the default one the
    /// Docker image ships).
    #[arg(long)]
    pub repository: bool,

    /// Module repository: an http(s):// URL, a file:// URL or a directory.
    /// Implies --repository.
    #[arg(long, value_name = "URL|PATH", env = "MSHOT_REPOSITORY_URL")]
    pub repository_url: Option<String>,

    /// minisign public key (RW...) or key file the repository's manifest must be
    /// signed with (default: `repository.key` in the settings file, else the
    /// key built into mshot).
    #[arg(long, value_name = "KEY|FILE", env = "MSHOT_REPOSITORY_KEY")]
    pub repository_key: Option<String>,

    /// Directory for the image and its manifest (default: the current
    /// directory; with --bucket alone, no local image is written).
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,

    /// Image file name (default: HOST-TIMESTAMP-mem.lime).
    #[arg(long, value_name = "NAME")]
    pub filename: Option<String>,

    /// Unload a lime module that is already loaded on the target.
    #[arg(long)]
    pub force: bool,

    /// Connect, become root, push and verify the module, then clean up; capture nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Fail if the memory stream is silent this long [default: 120].
    #[arg(long, value_name = "SECONDS")]
    pub stream_timeout: Option<u64>,

    /// How memory is read: lime (load the LiME module), kcore (read /proc/kcore
    /// with dd; nothing pushed or loaded), or auto: LiME when a module for the
    /// kernel is available and the target accepts it, else kcore [default: auto].
    #[arg(long, value_enum)]
    pub method: Option<crate::pipeline::source::Method>,

    /// LiME compresses the stream (zlib, compress=1); mshot inflates it as it
    /// arrives and stores the plain image. Pays off on slow links.
    #[arg(long)]
    pub compress: bool,

    /// With --compress: store the zlib stream as received (NAME.zlib) instead
    /// of the plain image. Inflate it before analysis.
    #[arg(long, requires = "compress")]
    pub store_compressed: bool,

    /// Also ask LiME for its own SHA-256 of the image (digest=sha256),
    /// computed in the target's kernel, and compare it with mshot's. Off by
    /// default: on a slow CPU it costs a quarter of the capture time, and
    /// SSH's integrity plus mshot's own SHA-256 already cover the stream
    /// (docs/capture.md).
    #[arg(long, conflicts_with = "no_digest")]
    pub digest: bool,

    /// The default (no LiME digest); kept for scripts written before it was.
    #[arg(long, hide = true)]
    pub no_digest: bool,

    /// Test hook: flip the byte at this offset of the received image, to prove
    /// that LiME's digest catches it. Needs --digest, so the capture fails.
    #[arg(long, hide = true, value_name = "OFFSET", requires = "digest")]
    pub test_corrupt_offset: Option<u64>,

    /// Analyse the image as soon as it lands with these plugins (banner, pslist,
    /// pstree, psaux, lsmod, netstat, maps, memdump, envars, bash, lsof,
    /// triage and the integrity checks); each
    /// plugin's rows go to NAME.<plugin>.json, memdump's files to NAME.memdump/.
    #[arg(long, value_name = "PLUGINS", value_delimiter = ',')]
    pub analyze: Vec<String>,

    /// Profile for --analyze: a Volatility 3 ISF or Rekall file, or a directory of them.
    #[arg(long, value_name = "PATH")]
    pub profile: Option<PathBuf>,

    /// Say each step on stderr (-vv debug, -vvv trace); by default only warnings.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Also write a detailed log (with the audit of remote commands) into this directory.
    #[arg(long, value_name = "DIR")]
    pub log_dir: Option<PathBuf>,

    /// Fleet file (YAML): capture every host it lists, in parallel. See
    /// config.example.yaml; MargaritaShotgun's config files are accepted.
    /// Flags that name one host's connection are refused with it; every
    /// other flag the file can also set wins over the file.
    #[arg(
        short = 'c',
        long = "config",
        value_name = "FILE",
        conflicts_with_all = ["server", "port", "user", "module", "key", "jump", "jump_server", "jump_port", "jump_username", "jump_key", "jump_password", "password", "sudo_password", "sudo", "filename"]
    )]
    pub config: Option<PathBuf>,

    /// Fleet: analyse every host live with these plugins instead of
    /// capturing it (see `mshot live`), then stack the rows: the processes,
    /// modules, listeners and findings only a few hosts have.
    #[arg(
        long,
        value_name = "PLUGINS",
        value_delimiter = ',',
        num_args = 1..,
        requires = "config",
        conflicts_with_all = ["analyze", "dry_run", "bucket"]
    )]
    pub live: Vec<String>,

    /// Fleet: hosts captured at once (default: the file's workers:, else auto).
    #[arg(long, value_name = "N|auto", requires = "config", value_parser = parse_workers)]
    pub workers: Option<crate::fleet::config::Workers>,

    /// Fleet: only these hosts (names or addresses from the file), comma-separated.
    #[arg(long, value_name = "NAMES", value_delimiter = ',', requires = "config")]
    pub hosts: Option<Vec<String>>,

    /// Fleet: take every n-th host starting at the i-th (1-based), to split one
    /// fleet file across n controllers, e.g. an indexed Kubernetes Job.
    #[arg(long, value_name = "I/N", requires = "config", value_parser = crate::fleet::config::parse_shard)]
    pub shard: Option<(usize, usize)>,

    /// Fleet: JSON report path (default: OUTPUT_DIR/mshot-fleet-TIMESTAMP.json).
    #[arg(long, value_name = "FILE", requires = "config")]
    pub report: Option<PathBuf>,

    /// Fleet benchmark aid: each host streams a LiME-format source at this port
    /// (as the target sees it) instead of loading LiME.
    #[arg(long, value_name = "PORT", requires = "config", hide = true)]
    pub bench_source_port: Option<u16>,

    #[command(flatten)]
    pub s3: S3Args,
}

/// How to reach one host and become root there: the flags a capture and
/// `mshot live` share.
#[derive(Args, Debug, Clone)]
pub struct ConnectionArgs {
    /// Target host name or address.
    #[arg(long, value_name = "HOST")]
    pub server: Option<String>,

    /// Target SSH port.
    #[arg(long, default_value_t = 22)]
    pub port: u16,

    /// User to log in as (default: the local user).
    #[arg(long, visible_alias = "username", value_name = "USER")]
    pub user: Option<String>,

    /// Private key file (OpenSSH, PEM or PKCS#8; ed25519, RSA or ECDSA).
    /// An encrypted key's passphrase comes from MSHOT_KEY_PASSPHRASE or a prompt.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,

    /// Log in with a password. Without a value mshot prompts for it; MSHOT_PASSWORD
    /// also works. A value given here is visible in the process list: avoid it.
    #[arg(long, value_name = "PASSWORD", num_args = 0..=1, default_missing_value = "")]
    pub password: Option<String>,

    /// Do not offer keys from ssh-agent (SSH_AUTH_SOCK).
    #[arg(long)]
    pub no_agent: bool,

    /// sudo password on the target. Without a value mshot prompts; MSHOT_SUDO_PASSWORD
    /// also works. Defaults to the login password when one was given.
    #[arg(long, value_name = "PASSWORD", num_args = 0..=1, default_missing_value = "")]
    pub sudo_password: Option<String>,

    /// How to become root: auto (root login as is, else sudo -n, else sudo with
    /// the password), never (the login must be root), always (sudo for every
    /// root command, even as root, so the target's sudo log has them all).
    #[arg(long, value_enum, default_value = "auto", value_name = "MODE")]
    pub sudo: crate::target::SudoMode,

    /// Jump hosts, OpenSSH style: user@host:port[,user@host:port...], first hop first.
    #[arg(short = 'J', long = "jump", value_name = "CHAIN")]
    pub jump: Option<String>,

    /// A single jump host (MargaritaShotgun's flag; -J takes chains).
    #[arg(long, value_name = "HOST")]
    pub jump_server: Option<String>,

    /// Port of --jump-server.
    #[arg(long, default_value_t = 22)]
    pub jump_port: u16,

    /// User on the jump hosts (default: --user).
    #[arg(long, value_name = "USER")]
    pub jump_username: Option<String>,

    /// Private key for the jump hosts (default: --key).
    #[arg(long, value_name = "FILE")]
    pub jump_key: Option<PathBuf>,

    /// Password for the jump hosts; prompts without a value, or MSHOT_JUMP_PASSWORD.
    #[arg(long, value_name = "PASSWORD", num_args = 0..=1, default_missing_value = "")]
    pub jump_password: Option<String>,

    /// known_hosts file to check host keys against.
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,

    /// Record the keys of hosts known_hosts does not list yet (a changed key is
    /// always refused).
    #[arg(long)]
    pub accept_new_host_keys: bool,

    /// Seconds to wait for each SSH connection [default: 20].
    #[arg(long, value_name = "SECONDS")]
    pub connect_timeout: Option<u64>,
}

/// The S3 flags, shared by a capture and `mshot upload` (one definition,
/// validated by `config::s3_spec`).
#[derive(Args, Debug, Clone)]
pub struct S3Args {
    /// Stream the image into this S3 bucket while it arrives (multipart, CRC32C
    /// per part). Credentials come from the standard AWS chain only.
    #[arg(long, value_name = "BUCKET", help_heading = "S3")]
    pub bucket: Option<String>,

    /// Key prefix: objects go to PREFIX/HOST/NAME.lime and PREFIX/HOST/NAME.json.
    #[arg(long, value_name = "PREFIX", requires = "bucket", help_heading = "S3")]
    pub prefix: Option<String>,

    /// AWS region of the bucket (default: AWS_REGION or the profile's).
    #[arg(long, value_name = "REGION", requires = "bucket", help_heading = "S3")]
    pub region: Option<String>,

    /// S3-compatible endpoint, e.g. http://127.0.0.1:3900 (path-style requests).
    #[arg(long, value_name = "URL", requires = "bucket", help_heading = "S3")]
    pub endpoint_url: Option<String>,

    /// AWS profile from ~/.aws/config (default: AWS_PROFILE or "default").
    #[arg(long, value_name = "NAME", requires = "bucket", help_heading = "S3")]
    pub aws_profile: Option<String>,

    /// Server-side encryption: AES256 (SSE-S3) or aws:kms (SSE-KMS).
    #[arg(long, value_name = "MODE", value_parser = ["AES256", "aws:kms"], requires = "bucket", help_heading = "S3")]
    pub sse: Option<String>,

    /// KMS key id or ARN for --sse aws:kms (default: the bucket's or AWS's key).
    #[arg(long, value_name = "ID", requires = "sse", help_heading = "S3")]
    pub sse_kms_key_id: Option<String>,

    /// Parts uploaded at once. Memory is about part size x (this + 1).
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64), requires = "bucket", help_heading = "S3")]
    pub s3_concurrency: u16,

    /// Smallest part size in MiB (at least 8); grows so that the image fits in
    /// S3's 10,000 parts.
    #[arg(long, value_name = "MIB", default_value_t = 8, value_parser = clap::value_parser!(u64).range(8..=5120), requires = "bucket", help_heading = "S3")]
    pub s3_part_size: u64,

    /// Replace existing objects under the same keys (refused otherwise).
    #[arg(long, requires = "bucket", help_heading = "S3")]
    pub overwrite: bool,
}

fn parse_workers(text: &str) -> Result<crate::fleet::config::Workers, String> {
    crate::fleet::config::Workers::parse(text).ok_or_else(|| {
        format!("--workers {text:?}: expected a number of hosts (1 or more) or auto")
    })
}

/// `mshot upload IMAGE --bucket B`: the S3 flags of a capture, plus what
/// only an upload needs.
#[derive(Args, Debug, Clone)]
pub struct UploadArgs {
    /// The image file; its manifest (NAME.json, written by the capture) must be beside it.
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,

    /// Upload an image that has no manifest: nothing to check its SHA-256
    /// against. Needs --host for the object's key and metadata.
    #[arg(long, requires = "host")]
    pub no_manifest: bool,

    /// Host name for the key PREFIX/HOST/NAME of an image without a manifest.
    #[arg(long, value_name = "HOST", requires = "no_manifest")]
    pub host: Option<String>,

    /// Say each step on stderr (-vv debug, -vvv trace); by default only warnings.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(flatten)]
    pub s3: S3Args,
}

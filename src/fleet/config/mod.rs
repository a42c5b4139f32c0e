//! The fleet file (`mshot -c fleet.yaml`): schema, strict validation and the
//! `CaptureJob` of every host.
//!
//! Everything that can be checked without the network is checked here, and
//! every problem is collected, so one run lists them all as
//! `FILE:LINE:COLUMN: message`: unknown keys (with the allowed ones), wrong
//! types, missing fields, unreadable or undecryptable key files, unreadable
//! modules, unset secret variables, duplicate names and output files.
//!
//! MargaritaShotgun's keys are accepted as they are (`hosts[].addr/port/
//! username/key/password/module/filename/jump_host`, `aws.bucket`, `workers`,
//! `logging.dir/prefix`, `repository.enabled/url/gpg_verify/manifest`), so its
//! users can bring their files. mshot adds `defaults:`, named `jump_chains:`,
//! secrets by reference (`password_env`, `key_passphrase_env`,
//! `sudo_password_env`), `sudo: auto|never|always`, `known_hosts`,
//! `output_dir`, `bucket:` and `analyze:`.
//! Inline passwords need `allow_inline_passwords: true` and are warned about.

mod hosts;
mod jump;
mod schema;
mod secrets;
mod source;
mod top;
mod values;

#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::yaml::{self, Pos};
use crate::capture::CaptureJob;
use crate::repository::ModuleFile;
use crate::transport::LoadedKey;

/// One located problem in a fleet file.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConfigError {
    pub pos: Pos,
    pub message: String,
}

/// Every problem found in one file, in file order.
#[derive(Debug)]
pub struct ConfigErrors {
    pub file: PathBuf,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if e.pos.line == 0 {
                write!(f, "{}: {}", self.file.display(), e.message)?;
            } else {
                write!(f, "{}:{}: {}", self.file.display(), e.pos, e.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// `workers:` / `--workers`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workers {
    Auto,
    Count(usize),
}

impl Workers {
    pub fn parse(text: &str) -> Option<Workers> {
        if text == "auto" {
            return Some(Workers::Auto);
        }
        text.parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .map(Workers::Count)
    }

    /// `auto`: the capture path is CPU-bound on the controller (decryption
    /// and SHA-256 each take a core at a few hundred MB/s), while a single
    /// target's LiME rarely exceeds ~100 MB/s: four hosts per core keeps the
    /// cores busy without thrashing, capped at 32 sessions.
    pub fn resolve(self, hosts: usize) -> usize {
        let n = match self {
            Workers::Count(n) => n,
            Workers::Auto => {
                let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
                (cores * 4).clamp(4, 32)
            }
        };
        n.min(hosts.max(1))
    }
}

/// `analyze:`: plugins to run on each image as soon as it lands.
#[derive(Clone, Debug, Default)]
pub struct AnalyzeSpec {
    pub plugins: Vec<String>,
    pub profile: Option<PathBuf>,
}

/// `bucket:` (or MargaritaShotgun's `aws.bucket`), validated as the flags are.
pub type BucketSpec = crate::pipeline::sink::s3::BucketRequest;

/// `repository:` (MargaritaShotgun's keys plus `dir` and `key`, the minisign
/// public key or key file, as `--repository-key`).
#[derive(Clone, Debug, Default)]
pub struct RepositorySpec {
    pub enabled: bool,
    pub url: Option<String>,
    pub key: Option<String>,
    pub gpg_verify: bool,
    pub manifest: Option<String>,
    pub dir: Option<PathBuf>,
}

/// One host, with defaults applied and every file read.
pub struct HostPlan {
    /// Label in progress lines, logs and the report (`name:`, else addr[:port]).
    pub name: String,
    pub pos: Pos,
    pub job: CaptureJob,
}

/// A validated fleet file.
pub struct FleetPlan {
    pub file: PathBuf,
    pub workers: Option<Workers>,
    pub output_dir: PathBuf,
    pub log_dir: Option<PathBuf>,
    pub log_prefix: Option<String>,
    pub analyze: Option<AnalyzeSpec>,
    pub hosts: Vec<HostPlan>,
    /// Warnings to show before starting (inline passwords).
    pub warnings: Vec<String>,
}

/// What the command line adds to the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub dry_run: bool,
    /// Only these hosts (by name or addr).
    pub only: Option<Vec<String>>,
    /// `--shard i/n`: keep hosts whose index (0-based) mod n is i-1.
    pub shard: Option<(usize, usize)>,
    pub accept_new_host_keys: bool,
    pub force: bool,
    /// Skip reading key and module files (for checking the schema of
    /// example files).
    pub skip_file_checks: bool,
    /// Benchmark runs load no module, so none is required.
    pub bench: bool,
    /// Settings from flags, which win over the file's (`fleet::flags`).
    pub flags: super::flags::Flags,
}

/// Reads, parses and validates `path`. Errors: every problem at once.
pub fn load(path: &Path, overrides: &Overrides) -> Result<FleetPlan, ConfigErrors> {
    let fail = |pos, message: String| ConfigErrors {
        file: path.to_path_buf(),
        errors: vec![ConfigError { pos, message }],
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        fail(
            Pos::default(),
            format!("cannot read the fleet file: {e}; check the path given to -c"),
        )
    })?;
    let doc = yaml::parse(&text).map_err(|e| fail(e.pos, e.message))?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut checker = Checker {
        errors: BTreeSet::new(),
        base,
        overrides: overrides.clone(),
        keys: HashMap::new(),
        modules: HashMap::new(),
        warnings: Vec::new(),
        allow_inline: false,
    };
    let plan = checker.fleet(&doc, path);
    if checker.errors.is_empty()
        && let Some(plan) = plan
    {
        return Ok(plan);
    }
    Err(ConfigErrors {
        file: path.to_path_buf(),
        errors: checker.errors.into_iter().collect(),
    })
}

/// Walks the file and keeps going past problems, so that one run reports them all.
struct Checker {
    errors: BTreeSet<ConfigError>,
    base: PathBuf,
    overrides: Overrides,
    /// Keys decrypted once per (file, passphrase variable).
    keys: HashMap<(PathBuf, Option<String>), Option<LoadedKey>>,
    modules: HashMap<PathBuf, Option<Arc<ModuleFile>>>,
    warnings: Vec<String>,
    allow_inline: bool,
}

impl Checker {
    fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.errors.insert(ConfigError {
            pos,
            message: message.into(),
        });
    }
}

/// Parses `--shard i/n` (1 <= i <= n).
pub fn parse_shard(text: &str) -> Result<(usize, usize), String> {
    let bad =
        || format!("--shard {text:?}: expected INDEX/COUNT with 1 <= INDEX <= COUNT, e.g. 2/5");
    let (i, n) = text.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (
        i.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if i == 0 || n == 0 || i > n {
        return Err(bad());
    }
    Ok((i, n))
}

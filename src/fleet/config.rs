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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::yaml::{self, Node, Pos, Value};
use crate::capture::{CaptureJob, ModuleSource};
use crate::repository::ModuleFile;
use crate::transport::keyfile::{decode_secret_key, needs_passphrase};
use crate::transport::{Credentials, Endpoint, HostKeyPolicy, LoadedKey, SshOptions};
use crate::util::secret::Secret;

const TOP_KEYS: &[&str] = &[
    "hosts",
    "defaults",
    "jump_chains",
    "workers",
    "output_dir",
    "logging",
    "aws",
    "bucket",
    "repository",
    "analyze",
    "allow_inline_passwords",
];

/// Keys a host may have; `defaults:` takes the same except the per-host ones.
const HOST_KEYS: &[&str] = &[
    "addr",
    "name",
    "port",
    "username",
    "user",
    "key",
    "key_passphrase_env",
    "password",
    "password_env",
    "sudo_password",
    "sudo_password_env",
    "sudo",
    "agent",
    "module",
    "filename",
    "jump_host",
    "jump",
    "known_hosts",
    "accept_new_host_keys",
    "output_dir",
    "force",
    "connect_timeout",
    "stream_timeout",
    "method",
    "compress",
    "store_compressed",
    "digest",
    "bucket",
];
const PER_HOST_ONLY: &[&str] = &["addr", "name", "filename"];

const HOP_KEYS: &[&str] = &[
    "addr",
    "port",
    "username",
    "user",
    "key",
    "key_passphrase_env",
    "password",
    "password_env",
];

const LOGGING_KEYS: &[&str] = &["dir", "prefix"];
const AWS_KEYS: &[&str] = &["bucket"];
const BUCKET_KEYS: &[&str] = &[
    "name",
    "prefix",
    "region",
    "endpoint_url",
    "profile",
    "sse",
    "sse_kms_key_id",
    "concurrency",
    "part_size_mib",
    "overwrite",
];
const REPOSITORY_KEYS: &[&str] = &["enabled", "url", "key", "gpg_verify", "manifest", "dir"];
const ANALYZE_KEYS: &[&str] = &["plugins", "profile"];

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

/// A mapping node seen through its allowed keys.
struct Map<'a> {
    entries: Vec<(&'a str, &'a Node, Pos)>,
    pos: Pos,
}

impl<'a> Map<'a> {
    fn get(&self, key: &str) -> Option<&'a Node> {
        self.entries.iter().find(|(k, _, _)| *k == key).map(|e| e.1)
    }
    fn key_pos(&self, key: &str) -> Option<Pos> {
        self.entries.iter().find(|(k, _, _)| *k == key).map(|e| e.2)
    }
}

/// Host values: a flag's, else the host's own entry, else `defaults:`.
struct Layered<'a> {
    flags: &'a Map<'a>,
    host: &'a Map<'a>,
    defaults: Option<&'a Map<'a>>,
}

impl<'a> Layered<'a> {
    fn get(&self, key: &str) -> Option<&'a Node> {
        (self.flags.get(key))
            .or_else(|| self.host.get(key))
            .or_else(|| self.defaults.and_then(|d| d.get(key)))
    }
    /// The first of several spellings (`user`/`username`) that is set.
    fn get_any(&self, keys: &[&str]) -> Option<&'a Node> {
        keys.iter()
            .find_map(|k| self.host.get(k))
            .or_else(|| keys.iter().find_map(|k| self.defaults?.get(k)))
    }
}

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

    fn map<'a>(&mut self, node: &'a Node, what: &str, allowed: &[&str]) -> Option<Map<'a>> {
        let Value::Map(entries) = &node.value else {
            self.error(
                node.pos,
                format!(
                    "{what} must be a mapping (key: value lines), found {}",
                    node.value.kind()
                ),
            );
            return None;
        };
        let mut map = Map {
            entries: Vec::new(),
            pos: node.pos,
        };
        for (key, value) in entries {
            let Value::Str(name) = &key.value else {
                self.error(
                    key.pos,
                    format!("keys in {what} must be names, found {}", key.value.kind()),
                );
                continue;
            };
            if !allowed.contains(&name.as_str()) {
                let hint = match closest(name, allowed) {
                    Some(near) => format!("did you mean `{near}`? "),
                    None => String::new(),
                };
                self.error(
                    key.pos,
                    format!(
                        "unknown key `{name}` in {what}; {hint}allowed: {}",
                        allowed.join(", ")
                    ),
                );
                continue;
            }
            map.entries.push((name.as_str(), value, key.pos));
        }
        Some(map)
    }

    fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.value {
            Value::Str(s) if !s.trim().is_empty() => Some(s.clone()),
            Value::Str(_) => {
                self.error(node.pos, format!("{what} is empty"));
                None
            }
            // A bare number is a fine host name or file name (10.0.0.5 is a string already).
            Value::Int(i) => Some(i.to_string()),
            other => {
                self.error(
                    node.pos,
                    format!("{what} must be a string, found {}", other.kind()),
                );
                None
            }
        }
    }

    fn boolean(&mut self, node: &Node, what: &str) -> Option<bool> {
        match &node.value {
            Value::Bool(b) => Some(*b),
            other => {
                self.error(
                    node.pos,
                    format!("{what} must be true or false, found {}", other.kind()),
                );
                None
            }
        }
    }

    fn integer(&mut self, node: &Node, what: &str, min: i128, max: i128) -> Option<i128> {
        match &node.value {
            Value::Int(i) if (min..=max).contains(i) => Some(*i),
            Value::Int(i) => {
                self.error(
                    node.pos,
                    format!("{what} must be between {min} and {max}, found {i}"),
                );
                None
            }
            Value::Str(s) if s.trim().parse::<i128>().is_ok() => {
                self.error(
                    node.pos,
                    format!(
                        "{what} must be an integer, found the string {s:?}; write it without quotes"
                    ),
                );
                None
            }
            other => {
                self.error(
                    node.pos,
                    format!("{what} must be an integer, found {}", other.kind()),
                );
                None
            }
        }
    }

    /// A path: `~/` expands to $HOME, relative paths are relative to the fleet file.
    fn path(&mut self, node: &Node, what: &str) -> Option<PathBuf> {
        let text = self.string(node, what)?;
        if let Some(rest) = text.strip_prefix("~/") {
            return match std::env::var_os("HOME") {
                Some(home) => Some(PathBuf::from(home).join(rest)),
                None => {
                    self.error(
                        node.pos,
                        format!("{what} starts with ~ but HOME is not set"),
                    );
                    None
                }
            };
        }
        let path = PathBuf::from(&text);
        Some(if path.is_absolute() {
            path
        } else {
            self.base.join(path)
        })
    }

    /// `*_env: VAR`: the variable must be set now, not halfway through the fleet.
    fn env_secret(&mut self, node: &Node, what: &str) -> Option<Secret> {
        let name = self.string(node, what)?;
        match std::env::var(&name) {
            Ok(value) => Some(Secret::new(value)),
            Err(_) => {
                self.error(
                    node.pos,
                    format!("{what}: environment variable {name} is not set; export it before running mshot"),
                );
                None
            }
        }
    }

    /// An inline secret: refused unless `allow_inline_passwords: true`.
    fn inline_secret(&mut self, node: &Node, what: &str, owner: &str) -> Option<Secret> {
        let value = self.string(node, what)?;
        if !self.allow_inline {
            self.error(
                node.pos,
                format!(
                    "{what} written in the file; use {what}_env: VARIABLE instead (or set allow_inline_passwords: true at the top, at your own risk)"
                ),
            );
            return None;
        }
        let warning = format!(
            "{owner}: {what} is written in the fleet file at line {}; anyone who can read the file can read it",
            node.pos.line
        );
        if !self.warnings.contains(&warning) {
            self.warnings.push(warning);
        }
        Some(Secret::new(value))
    }

    fn fleet(&mut self, doc: &Node, file: &Path) -> Option<FleetPlan> {
        if matches!(doc.value, Value::Null) {
            self.error(
                Pos::default(),
                "the fleet file is empty; it needs at least hosts: (see config.example.yaml)",
            );
            return None;
        }
        let top = self.map(doc, "the fleet file", TOP_KEYS)?;
        if let Some(node) = top.get("allow_inline_passwords") {
            self.allow_inline = self
                .boolean(node, "allow_inline_passwords")
                .unwrap_or(false);
        }
        let workers = top.get("workers").and_then(|node| match &node.value {
            Value::Str(s) if s == "auto" => Some(Workers::Auto),
            _ => self
                .integer(node, "workers (a number or auto)", 1, 1024)
                .map(|n| Workers::Count(n as usize)),
        });
        let flags = self.overrides.flags.clone();
        let output_dir = match (&flags.output_dir, top.get("output_dir")) {
            (Some(dir), _) => Some(dir.clone()),
            (None, Some(node)) => self.path(node, "output_dir"),
            (None, None) => Some(PathBuf::from(".")),
        };
        let (mut log_dir, mut log_prefix) = (None, None);
        if let Some(node) = top.get("logging")
            && let Some(logging) = self.map(node, "logging", LOGGING_KEYS)
        {
            log_dir = logging.get("dir").and_then(|n| self.path(n, "logging.dir"));
            log_prefix = logging
                .get("prefix")
                .and_then(|n| self.string(n, "logging.prefix"));
        }
        let analyze = top.get("analyze").and_then(|n| self.analyze(n));
        let bucket = self.bucket(&top);
        let bucket = flags.bucket.clone().or(bucket);
        let repository = top.get("repository").and_then(|n| self.repository(n));
        let repository = match &flags.repository {
            Some(r) => Some(r.over(repository)),
            None => repository,
        };

        let defaults = top
            .get("defaults")
            .and_then(|n| self.map(n, "defaults", HOST_KEYS));
        if let Some(defaults) = &defaults {
            for key in PER_HOST_ONLY {
                if let Some(pos) = defaults.key_pos(key) {
                    self.error(
                        pos,
                        format!("`{key}` is per host; it cannot be in defaults"),
                    );
                }
            }
        }
        let chains = top
            .get("jump_chains")
            .map(|n| self.jump_chains(n))
            .unwrap_or_default();

        let Some(hosts_node) = top.get("hosts") else {
            self.error(
                top.pos,
                "missing `hosts:`: the list of hosts to capture (each with at least addr:)",
            );
            return None;
        };
        let Value::Seq(items) = &hosts_node.value else {
            self.error(
                hosts_node.pos,
                format!("hosts must be a list, found {}", hosts_node.value.kind()),
            );
            return None;
        };
        if items.is_empty() {
            self.error(hosts_node.pos, "hosts is empty: nothing to capture");
        }
        let output_dir = output_dir.unwrap_or_default();
        let flag_map = Map {
            entries: (flags.host.iter())
                .map(|(k, n)| (k.as_str(), n, n.pos))
                .collect(),
            pos: Pos::default(),
        };
        let context = Context {
            flags: &flag_map,
            bucket_flag: flags.bucket.is_some(),
            defaults: defaults.as_ref(),
            chains: &chains,
            output_dir: &output_dir,
            repository: repository.as_ref(),
            bucket: bucket.as_ref(),
            output_dir_given: top.get("output_dir").is_some() || flags.output_dir.is_some(),
            analyze: analyze.is_some() || flags.analyze,
        };
        let mut hosts = Vec::new();
        for item in items {
            if let Some(host) = self.host(item, &context) {
                hosts.push(host);
            }
        }

        // Names and output files must be unique, or reports and images collide.
        let mut names: BTreeMap<String, Pos> = BTreeMap::new();
        let mut images: BTreeMap<PathBuf, Pos> = BTreeMap::new();
        for host in &hosts {
            if let Some(first) = names.insert(host.name.clone(), host.pos) {
                self.error(
                    host.pos,
                    format!(
                        "a second host named {} (the first is at line {}); give one a distinct name:",
                        host.name, first.line
                    ),
                );
                continue;
            }
            if let Some(first) = images.insert(host.job.image_path.clone(), host.pos) {
                self.error(
                    host.pos,
                    format!(
                        "image file {} is also used by the host at line {}; give a distinct filename:",
                        host.job.image_path.display(),
                        first.line
                    ),
                );
            }
        }

        let hosts = self.select(hosts, hosts_node.pos);
        Some(FleetPlan {
            file: file.to_path_buf(),
            workers,
            output_dir,
            log_dir,
            log_prefix,
            analyze,
            hosts,
            warnings: std::mem::take(&mut self.warnings),
        })
    }

    /// Applies `--hosts` and `--shard`.
    fn select(&mut self, hosts: Vec<HostPlan>, pos: Pos) -> Vec<HostPlan> {
        let mut hosts = hosts;
        if let Some(only) = self.overrides.only.clone() {
            for wanted in &only {
                if !hosts
                    .iter()
                    .any(|h| &h.name == wanted || &h.job.target().host == wanted)
                {
                    let known: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
                    self.error(
                        pos,
                        format!(
                            "--hosts names {wanted}, which is not in the file (hosts: {})",
                            known.join(", ")
                        ),
                    );
                }
            }
            hosts.retain(|h| {
                only.iter()
                    .any(|w| w == &h.name || w == &h.job.target().host)
            });
        }
        if let Some((index, count)) = self.overrides.shard {
            hosts = hosts
                .into_iter()
                .enumerate()
                .filter(|(i, _)| i % count == index - 1)
                .map(|(_, h)| h)
                .collect();
        }
        hosts
    }

    fn analyze(&mut self, node: &Node) -> Option<AnalyzeSpec> {
        // `analyze: [pstree, psaux]` or `analyze: {plugins: [...], profile: dir}`.
        let (plugins_node, profile) = match &node.value {
            Value::Seq(_) => (Some(node), None),
            _ => {
                let map = self.map(node, "analyze", ANALYZE_KEYS)?;
                let profile = map
                    .get("profile")
                    .and_then(|n| self.path(n, "analyze.profile"));
                (map.get("plugins"), profile)
            }
        };
        let Some(plugins_node) = plugins_node else {
            self.error(node.pos, "analyze needs plugins: [pstree, ...]");
            return None;
        };
        let Value::Seq(items) = &plugins_node.value else {
            self.error(
                plugins_node.pos,
                format!(
                    "analyze plugins must be a list, found {}",
                    plugins_node.value.kind()
                ),
            );
            return None;
        };
        let mut plugins = Vec::new();
        for item in items {
            if let Some(name) = self.string(item, "a plugin name") {
                if memimage::plugins::PLUGINS.contains(&name.as_str()) {
                    plugins.push(name);
                } else {
                    self.error(
                        item.pos,
                        format!(
                            "unknown plugin {name}; available: {}",
                            memimage::plugins::PLUGINS.join(", ")
                        ),
                    );
                }
            }
        }
        if let Some(profile) = &profile
            && !self.overrides.skip_file_checks
            && !profile.exists()
        {
            self.error(
                node.pos,
                format!("analyze.profile {} does not exist", profile.display()),
            );
        }
        Some(AnalyzeSpec { plugins, profile })
    }

    fn bucket(&mut self, top: &Map) -> Option<BucketSpec> {
        let mut spec = None;
        if let Some(node) = top.get("aws")
            && let Some(aws) = self.map(node, "aws", AWS_KEYS)
            && let Some(name) = aws.get("bucket")
        {
            spec = self.string(name, "aws.bucket").map(|name| BucketSpec {
                name,
                ..BucketSpec::default()
            });
            if let Some(spec) = &spec
                && let Err(e) = spec.validate()
            {
                self.error(name.pos, format!("aws.bucket: {e:#}"));
            }
        }
        if let Some(node) = top.get("bucket") {
            if spec.is_some() {
                self.error(
                    node.pos,
                    "give the bucket either as aws.bucket or as bucket:, not both",
                );
            }
            spec = self.bucket_map(node);
        }
        spec
    }

    /// A `bucket:` map, at the top, in `defaults:` or on a host; checked here
    /// so that a bad value is reported with its line like any other.
    fn bucket_map(&mut self, node: &Node) -> Option<BucketSpec> {
        let map = self.map(node, "bucket", BUCKET_KEYS)?;
        let Some(name_node) = map.get("name") else {
            self.error(node.pos, "bucket needs name:");
            return None;
        };
        let mut text = |key: &str| {
            map.get(key)
                .and_then(|n| self.string(n, &format!("bucket.{key}")))
        };
        let mut spec = BucketSpec {
            name: text("name")?,
            prefix: text("prefix"),
            region: text("region"),
            endpoint_url: text("endpoint_url"),
            profile: text("profile"),
            sse: text("sse"),
            sse_kms_key_id: text("sse_kms_key_id"),
            ..BucketSpec::default()
        };
        let mut ok = true;
        if let Some(n) = map.get("concurrency") {
            spec.concurrency = self
                .integer(n, "bucket.concurrency", 1, 64)
                .map(|v| v as u64);
            ok &= spec.concurrency.is_some();
        }
        if let Some(n) = map.get("part_size_mib") {
            spec.part_size_mib = self
                .integer(n, "bucket.part_size_mib", 8, 5120)
                .map(|v| v as u64);
            ok &= spec.part_size_mib.is_some();
        }
        if let Some(n) = map.get("overwrite") {
            let overwrite = self.boolean(n, "bucket.overwrite");
            ok &= overwrite.is_some();
            spec.overwrite = overwrite.unwrap_or(false);
        }
        if let Err(e) = spec.validate() {
            self.error(name_node.pos, format!("bucket: {e:#}"));
            return None;
        }
        ok.then_some(spec)
    }

    fn repository(&mut self, node: &Node) -> Option<RepositorySpec> {
        let map = self.map(node, "repository", REPOSITORY_KEYS)?;
        let mut spec = RepositorySpec {
            enabled: false,
            gpg_verify: true,
            ..RepositorySpec::default()
        };
        if let Some(n) = map.get("enabled") {
            spec.enabled = self.boolean(n, "repository.enabled").unwrap_or(false);
        }
        if let Some(n) = map.get("gpg_verify") {
            spec.gpg_verify = self.boolean(n, "repository.gpg_verify").unwrap_or(true);
        }
        spec.url = map
            .get("url")
            .and_then(|n| self.string(n, "repository.url"));
        spec.manifest = map
            .get("manifest")
            .and_then(|n| self.string(n, "repository.manifest"));
        spec.dir = map.get("dir").and_then(|n| self.path(n, "repository.dir"));
        spec.key = map
            .get("key")
            .and_then(|n| self.string(n, "repository.key"));
        // mshot always checks the signature: a file that turns it off is refused
        // rather than silently overruled.
        if !spec.gpg_verify
            && let Some(pos) = map.key_pos("gpg_verify")
        {
            self.error(
                pos,
                "repository.gpg_verify: false is not supported: mshot always verifies the manifest's signature; remove it",
            );
        }
        if let (Some(manifest), Some(pos)) = (&spec.manifest, map.key_pos("manifest"))
            && manifest != "primary"
        {
            self.error(
                pos,
                format!("repository.manifest: {manifest:?}: an mshot repository has one manifest (manifest.json); remove it"),
            );
        }
        if spec.url.is_some() && spec.dir.is_some() {
            self.error(map.pos, "repository: give url or dir, not both");
        }
        Some(spec)
    }

    fn jump_chains(&mut self, node: &Node) -> HashMap<String, (Pos, Vec<HopSpec>)> {
        let mut chains = HashMap::new();
        let Value::Map(entries) = &node.value else {
            self.error(
                node.pos,
                format!(
                    "jump_chains must map names to lists of hops, found {}",
                    node.value.kind()
                ),
            );
            return chains;
        };
        for (key, value) in entries {
            let Some(name) = self.string(key, "a jump chain name") else {
                continue;
            };
            let hops = self.hops(value, &format!("jump chain {name}"));
            chains.insert(name, (value.pos, hops));
        }
        chains
    }

    /// A list of hops, each `user@host:port` or a mapping like `jump_host:`.
    fn hops(&mut self, node: &Node, what: &str) -> Vec<HopSpec> {
        let items: Vec<&Node> = match &node.value {
            Value::Seq(items) => items.iter().collect(),
            Value::Str(_) | Value::Map(_) => vec![node],
            other => {
                self.error(
                    node.pos,
                    format!("{what} must be a list of hops, found {}", other.kind()),
                );
                return Vec::new();
            }
        };
        if items.is_empty() {
            self.error(node.pos, format!("{what} has no hops"));
        }
        let mut hops = Vec::new();
        for item in items {
            if let Value::Str(text) = &item.value {
                match crate::transport::route::parse_jump_chain(text) {
                    Ok(parsed) => {
                        for (user, addr, port) in parsed {
                            hops.push(HopSpec {
                                pos: item.pos,
                                addr,
                                port,
                                user,
                                ..HopSpec::default()
                            });
                        }
                    }
                    Err(_) => self.error(
                        item.pos,
                        format!("bad hop {text:?} in {what}: expected [user@]host[:port]"),
                    ),
                }
                continue;
            }
            if let Some(hop) = self.hop(item, what) {
                hops.push(hop);
            }
        }
        hops
    }

    fn hop(&mut self, node: &Node, what: &str) -> Option<HopSpec> {
        let map = self.map(node, &format!("a hop of {what}"), HOP_KEYS)?;
        let Some(addr) = map.get("addr") else {
            self.error(node.pos, format!("a hop of {what} needs addr:"));
            return None;
        };
        let addr = self.string(addr, "addr")?;
        let mut hop = HopSpec {
            pos: node.pos,
            addr,
            port: 22,
            ..HopSpec::default()
        };
        if let Some(n) = map.get("port") {
            hop.port = self.integer(n, "port", 1, 65535).unwrap_or(22) as u16;
        }
        if let Some(n) = map.get("user").or(map.get("username")) {
            hop.user = self.string(n, "username");
        }
        if let Some(n) = map.get("key") {
            hop.key = Some((n.clone(), self.path(n, "key")?));
        }
        hop.key_passphrase_env = map.get("key_passphrase_env").cloned();
        if let Some(n) = map.get("password_env") {
            hop.password = self.env_secret(n, "password_env");
        }
        if let Some(n) = map.get("password") {
            hop.password = self.inline_secret(n, "password", &format!("jump host {}", hop.addr));
        }
        Some(hop)
    }

    fn host(&mut self, node: &Node, context: &Context) -> Option<HostPlan> {
        // `- 10.0.0.5` is short for `- addr: 10.0.0.5`.
        if let Value::Str(_) = &node.value {
            let key = Node {
                value: Value::Str("addr".into()),
                pos: node.pos,
            };
            let entry = Node {
                value: Value::Map(vec![(key, node.clone())]),
                pos: node.pos,
            };
            return self.host_entry(&entry, context);
        }
        self.host_entry(node, context)
    }

    fn host_entry(&mut self, node: &Node, context: &Context) -> Option<HostPlan> {
        let map = self.map(node, "a host", HOST_KEYS)?;
        let layered = Layered {
            flags: context.flags,
            host: &map,
            defaults: context.defaults,
        };
        let Some(addr_node) = map.get("addr") else {
            self.error(node.pos, "a host needs addr: (its name or address)");
            return None;
        };
        let addr = self.string(addr_node, "addr");
        let port = match layered.get("port") {
            Some(n) => self.integer(n, "port", 1, 65535).map(|p| p as u16),
            None => Some(22),
        };
        let name = match map.get("name") {
            Some(n) => self.string(n, "name"),
            None => match (&addr, port) {
                (Some(a), Some(22)) => Some(a.clone()),
                (Some(a), Some(p)) => Some(format!("{a}:{p}")),
                _ => None,
            },
        };
        let user = match layered.get_any(&["user", "username"]) {
            Some(n) => self.string(n, "username"),
            None => Some(crate::capture::local_user()),
        };

        // Secrets by reference; inline only when allowed.
        let owner = name.clone().unwrap_or_default();
        let mut password = layered
            .get("password_env")
            .and_then(|n| self.env_secret(n, "password_env"));
        if let Some(n) = layered.get("password") {
            password = self.inline_secret(n, "password", &owner);
        }
        let mut sudo_password = layered
            .get("sudo_password_env")
            .and_then(|n| self.env_secret(n, "sudo_password_env"));
        if let Some(n) = layered.get("sudo_password") {
            sudo_password = self.inline_secret(n, "sudo_password", &owner);
        }
        // Named (never the value) when sudo refuses the password.
        let env_name = |key: &str| match layered.get(key).map(|n| &n.value) {
            Some(Value::Str(var)) => format!("{key} {var}"),
            _ => key.to_string(),
        };
        let sudo_password_from = if layered.get("sudo_password").is_some() {
            Some("sudo_password (inline)".to_string())
        } else if layered.get("sudo_password_env").is_some() {
            Some(env_name("sudo_password_env"))
        } else if layered.get("password").is_some() {
            Some("password (inline; the login password)".to_string())
        } else if layered.get("password_env").is_some() {
            Some(format!("{} (the login password)", env_name("password_env")))
        } else {
            None
        };
        let sudo_mode = match layered.get("sudo") {
            None => Some(crate::target::SudoMode::Auto),
            Some(n) => {
                let parsed = match &n.value {
                    Value::Bool(true) => Some(crate::target::SudoMode::Always),
                    Value::Bool(false) => Some(crate::target::SudoMode::Never),
                    Value::Str(text) => crate::target::SudoMode::parse(text),
                    _ => None,
                };
                if parsed.is_none() {
                    let found = match &n.value {
                        Value::Str(text) => format!("{text:?}"),
                        other => other.kind().to_string(),
                    };
                    self.error(
                        n.pos,
                        format!(
                            "sudo must be auto, never or always (or true for always, false for never), found {found}"
                        ),
                    );
                }
                parsed
            }
        };

        let key = match layered.get("key") {
            Some(n) => {
                let passphrase_env = layered.get("key_passphrase_env");
                self.path(n, "key")
                    .and_then(|path| self.load_key(n, &path, passphrase_env, password.as_ref()))
            }
            None => {
                if let Some(n) = layered.get("key_passphrase_env") {
                    self.error(n.pos, "key_passphrase_env without key:");
                }
                None
            }
        };
        let use_agent = match layered.get("agent") {
            Some(n) => self.boolean(n, "agent").unwrap_or(false),
            None => std::env::var_os("SSH_AUTH_SOCK").is_some(),
        };
        let known_hosts = match layered.get("known_hosts") {
            Some(n) => self.path(n, "known_hosts"),
            None => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".ssh/known_hosts")),
        };
        let flag = |checker: &mut Checker, key: &str| {
            layered
                .get(key)
                .and_then(|n| checker.boolean(n, key))
                .unwrap_or(false)
        };
        let accept_new = flag(self, "accept_new_host_keys") || self.overrides.accept_new_host_keys;
        let force = flag(self, "force") || self.overrides.force;
        let seconds = |checker: &mut Checker, key: &str, default: u64| match layered.get(key) {
            Some(n) => checker
                .integer(n, &format!("{key} (seconds)"), 1, 86_400)
                .map_or(default, |s| s as u64),
            None => default,
        };
        let source = self.source_options(&layered);
        let connect_timeout = seconds(self, "connect_timeout", 20);
        let stream_timeout = seconds(self, "stream_timeout", 120);

        let repository = context.repository.filter(|r| {
            r.enabled
                && !self.overrides.bench
                && source
                    .as_ref()
                    .is_some_and(|s| s.method != crate::pipeline::source::Method::Kcore)
        });
        let module = match (layered.get("module"), repository) {
            (Some(n), _) => self
                .path(n, "module")
                .and_then(|p| self.module(n, &p))
                .map(|m| ModuleSource::File(ModuleFile::clone(&m))),
            // No module: the repository, resolved once the host's kernel is known.
            (None, Some(r)) => {
                let url = r
                    .url
                    .clone()
                    .or_else(|| r.dir.as_ref().map(|d| d.display().to_string()));
                match crate::repository::RepositorySpec::new(url.as_deref(), r.key.as_deref()) {
                    Ok(spec) => Some(ModuleSource::Repository(spec)),
                    Err(e) => {
                        self.error(map.pos, format!("{owner}: repository: {e:#}"));
                        None
                    }
                }
            }
            // No module: --method auto reads /proc/kcore instead (and benchmarks load none).
            (None, None)
                if self.overrides.bench
                    || source
                        .as_ref()
                        .is_some_and(|s| s.method != crate::pipeline::source::Method::Lime) =>
            {
                Some(ModuleSource::File(ModuleFile {
                    path: PathBuf::new(),
                    bytes: Vec::new(),
                    sha256: String::new(),
                }))
            }
            // The method itself is wrong: that error says enough.
            (None, None) if source.is_none() => None,
            (None, None) => {
                self.error(
                    map.pos,
                    format!(
                        "{owner}: method lime needs module: (the LiME .ko built for its kernel), here or in defaults, or repository: {{enabled: true, url: ...}}; or use method: auto or kcore"
                    ),
                );
                None
            }
        };

        let output_dir = match layered.get("output_dir") {
            Some(n) => self.path(n, "output_dir"),
            None => Some(context.output_dir.to_path_buf()),
        };
        // A host's own bucket: replaces the top one; with a bucket, the image
        // is written locally only when an output_dir is given too.
        let bucket = match layered.get("bucket") {
            Some(n) if context.bucket_flag => {
                self.bucket_map(n); // checked, though --bucket replaces it
                context.bucket.cloned()
            }
            Some(n) => self.bucket_map(n),
            None => context.bucket.cloned(),
        };
        let s3 = bucket.as_ref().and_then(|b| b.validate().ok());
        let local_image =
            s3.is_none() || context.output_dir_given || layered.get("output_dir").is_some();
        if !local_image && context.analyze {
            self.error(
                node.pos,
                "analyze: needs the image on disk but this host only uploads to the bucket; add output_dir:",
            );
        }
        let filename = match map.get("filename") {
            Some(n) => self.string(n, "filename").and_then(|f| {
                if f.contains('/') || f == "." || f == ".." {
                    self.error(
                        n.pos,
                        format!("filename must be a plain file name, not a path: {f:?}"),
                    );
                    None
                } else {
                    Some(f)
                }
            }),
            None => name.as_deref().map(crate::capture::default_filename),
        };

        // Jump hosts: `jump: NAME` (a chain), `jump: [hops]`, or MargaritaShotgun's `jump_host:`.
        let jump = layered.get("jump");
        let jump_host = layered.get("jump_host");
        let hops = match (jump, jump_host) {
            (Some(j), Some(h)) => {
                self.error(
                    h.pos,
                    format!(
                        "give jump hosts either with jump: (line {}) or with jump_host:, not both",
                        j.pos.line
                    ),
                );
                Vec::new()
            }
            (Some(j), None) => match &j.value {
                Value::Str(chain) if !chain.contains(['@', ':', ',']) => {
                    match context.chains.get(chain) {
                        Some((_, hops)) => hops.clone(),
                        None => {
                            let mut names: Vec<&str> =
                                context.chains.keys().map(String::as_str).collect();
                            names.sort();
                            self.error(
                                j.pos,
                                format!(
                                    "no jump chain named {chain} (jump_chains defines: {})",
                                    if names.is_empty() {
                                        "none".to_string()
                                    } else {
                                        names.join(", ")
                                    }
                                ),
                            );
                            Vec::new()
                        }
                    }
                }
                _ => self.hops(j, "jump"),
            },
            (None, Some(h)) => self.hop(h, "jump_host").into_iter().collect(),
            (None, None) => Vec::new(),
        };

        let source = source?;
        let sudo_mode = sudo_mode?;
        let (addr, port, name, user, module, output_dir, filename, known_hosts) = (
            addr?,
            port?,
            name?,
            user?,
            module?,
            output_dir?,
            filename?,
            known_hosts,
        );
        let Some(known_hosts) = known_hosts else {
            self.error(
                node.pos,
                "HOME is not set, so there is no default known_hosts; give known_hosts:",
            );
            return None;
        };
        let mut route = Vec::new();
        for hop in hops {
            let hop_key = match &hop.key {
                Some((n, path)) => self.load_key(
                    n,
                    path,
                    hop.key_passphrase_env.as_ref(),
                    hop.password.as_ref(),
                ),
                None => key.clone(),
            };
            route.push(Endpoint {
                host: hop.addr,
                port: hop.port,
                user: hop.user.unwrap_or_else(|| user.clone()),
                credentials: Credentials {
                    key: hop_key,
                    use_agent,
                    password: hop.password,
                },
            });
        }
        let sudo_password = sudo_password.or_else(|| password.clone());
        route.push(Endpoint {
            host: addr,
            port,
            user,
            credentials: Credentials {
                key,
                use_agent,
                password,
            },
        });
        Some(HostPlan {
            name,
            pos: node.pos,
            job: CaptureJob {
                route,
                host_keys: HostKeyPolicy {
                    known_hosts,
                    accept_new,
                },
                ssh: SshOptions {
                    connect_timeout: Duration::from_secs(connect_timeout),
                    keepalive_interval: Duration::from_secs(15),
                },
                module,
                image_path: output_dir.join(filename),
                local_image,
                s3,
                sudo_password,
                sudo: crate::capture::SudoPolicy {
                    mode: sudo_mode,
                    password_from: sudo_password_from,
                },
                force,
                dry_run: self.overrides.dry_run,
                stream_idle_timeout: Duration::from_secs(stream_timeout),
                source,
            },
        })
    }

    /// `method`, `compress`, `store_compressed`, `digest`: as the flags of one capture.
    fn source_options(
        &mut self,
        layered: &Layered,
    ) -> Option<crate::pipeline::source::SourceOptions> {
        use crate::pipeline::source::{Method, SourceOptions};
        let mut options = SourceOptions::default();
        let mut ok = true;
        if let Some(n) = layered.get("method") {
            match &n.value {
                Value::Str(m) if m == "auto" => options.method = Method::Auto,
                Value::Str(m) if m == "lime" => options.method = Method::Lime,
                Value::Str(m) if m == "kcore" => options.method = Method::Kcore,
                other => {
                    let found = match other {
                        Value::Str(m) => format!("{m:?}"),
                        other => other.kind().to_string(),
                    };
                    self.error(
                        n.pos,
                        format!("method must be auto, lime or kcore, found {found}"),
                    );
                    ok = false;
                }
            }
        }
        for (key, slot) in [
            ("compress", &mut options.compress),
            ("store_compressed", &mut options.store_compressed),
            ("digest", &mut options.digest),
        ] {
            if let Some(n) = layered.get(key) {
                match self.boolean(n, key) {
                    Some(b) => *slot = b,
                    None => ok = false,
                }
            }
        }
        if options.store_compressed
            && !options.compress
            && let Some(n) = layered.get("store_compressed")
        {
            self.error(n.pos, "store_compressed needs compress: true");
            ok = false;
        }
        ok.then_some(options)
    }

    /// Reads and decrypts a key once; errors point at the `key:` value.
    fn load_key(
        &mut self,
        node: &Node,
        path: &Path,
        passphrase_env: Option<&Node>,
        password: Option<&Secret>,
    ) -> Option<LoadedKey> {
        let env_name = passphrase_env.and_then(|n| match &n.value {
            Value::Str(s) => Some(s.clone()),
            _ => None,
        });
        let cache_key = (path.to_path_buf(), env_name.clone());
        if let Some(cached) = self.keys.get(&cache_key) {
            return cached.clone();
        }
        let loaded = self.decode_key(node, path, passphrase_env, password);
        self.keys.insert(cache_key, loaded.clone());
        loaded
    }

    fn decode_key(
        &mut self,
        node: &Node,
        path: &Path,
        passphrase_env: Option<&Node>,
        password: Option<&Secret>,
    ) -> Option<LoadedKey> {
        if self.overrides.skip_file_checks {
            return None;
        }
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                self.error(
                    node.pos,
                    format!("cannot read key file {}: {e}", path.display()),
                );
                return None;
            }
        };
        let key = match decode_secret_key(&text, None) {
            Ok(key) => key,
            Err(e) if needs_passphrase(&e) => {
                let passphrase = match passphrase_env {
                    Some(n) => self.env_secret(n, "key_passphrase_env")?,
                    None => match password {
                        // MargaritaShotgun: the host's password also unlocks its key.
                        Some(p) => p.clone(),
                        None => {
                            self.error(
                                node.pos,
                                format!(
                                    "key {} is encrypted; add key_passphrase_env: VARIABLE naming the variable that holds its passphrase",
                                    path.display()
                                ),
                            );
                            return None;
                        }
                    },
                };
                match decode_secret_key(&text, Some(passphrase.expose())) {
                    Ok(key) => key,
                    Err(e) => {
                        // Name where the passphrase came from, never the value.
                        let from = match passphrase_env.map(|n| &n.value) {
                            Some(Value::Str(var)) => format!("key_passphrase_env {var}"),
                            _ => "the host's password (no key_passphrase_env)".to_string(),
                        };
                        self.error(
                            node.pos,
                            format!(
                                "cannot decrypt key {} with the passphrase from {from}: {e}; check that passphrase",
                                path.display()
                            ),
                        );
                        return None;
                    }
                }
            }
            Err(e) => {
                self.error(
                    node.pos,
                    format!(
                        "cannot load key {}: {e}; mshot reads OpenSSH, PEM and PKCS#8 private keys",
                        path.display()
                    ),
                );
                return None;
            }
        };
        Some(LoadedKey {
            path: path.to_path_buf(),
            key: Arc::new(key),
        })
    }

    /// Reads and hashes a module once; hosts share it.
    fn module(&mut self, node: &Node, path: &Path) -> Option<Arc<ModuleFile>> {
        if let Some(cached) = self.modules.get(path) {
            return cached.clone();
        }
        let module = if self.overrides.skip_file_checks {
            Some(Arc::new(ModuleFile {
                path: path.to_path_buf(),
                bytes: Vec::new(),
                sha256: String::new(),
            }))
        } else {
            match std::fs::read(path) {
                Ok(bytes) if bytes.is_empty() => {
                    self.error(node.pos, format!("module {} is empty", path.display()));
                    None
                }
                Ok(bytes) => Some(Arc::new(ModuleFile {
                    path: path.to_path_buf(),
                    sha256: hex::encode(Sha256::digest(&bytes)),
                    bytes,
                })),
                Err(e) => {
                    self.error(
                        node.pos,
                        format!("cannot read module {}: {e}", path.display()),
                    );
                    None
                }
            }
        };
        self.modules.insert(path.to_path_buf(), module.clone());
        module
    }
}

struct Context<'a> {
    /// Settings from flags, above every host's.
    flags: &'a Map<'a>,
    /// `--bucket`: every host's bucket is `bucket`.
    bucket_flag: bool,
    defaults: Option<&'a Map<'a>>,
    chains: &'a HashMap<String, (Pos, Vec<HopSpec>)>,
    output_dir: &'a Path,
    repository: Option<&'a RepositorySpec>,
    bucket: Option<&'a BucketSpec>,
    /// `output_dir:` was given at the top: keep local images beside a bucket.
    output_dir_given: bool,
    /// `analyze:` was given: every host needs a local image.
    analyze: bool,
}

#[derive(Clone, Debug, Default)]
struct HopSpec {
    #[allow(dead_code)]
    pos: Pos,
    addr: String,
    port: u16,
    user: Option<String>,
    key: Option<(Node, PathBuf)>,
    key_passphrase_env: Option<Node>,
    password: Option<Secret>,
}

/// The allowed key closest to a misspelt one (edit distance at most 2).
fn closest<'a>(word: &str, allowed: &[&'a str]) -> Option<&'a str> {
    allowed
        .iter()
        .map(|a| (edit_distance(word, a), *a))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, a)| a)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for j in 0..b.len() {
            let current = row[j + 1];
            row[j + 1] = if ca == b[j] {
                previous
            } else {
                1 + previous.min(row[j]).min(row[j + 1])
            };
            previous = current;
        }
    }
    row[b.len()]
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

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<FleetPlan, ConfigErrors> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.yaml");
        std::fs::write(&path, text).unwrap();
        std::fs::write(dir.path().join("lime.ko"), b"\x7fELF module").unwrap();
        load(&path, &Overrides::default())
    }

    #[test]
    fn every_problem_is_reported_with_its_position() {
        let errors = check(
            "hosts:\n  - addr: a\n    module: lime.ko\n    prot: 22\n  - port: \"x\"\n    module: lime.ko\nworkerz: 3\n",
        )
        .err()
        .unwrap();
        let text = errors.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].contains("fleet.yaml:4:5: unknown key `prot`")
                && lines[0].contains("did you mean `port`"),
            "{text}"
        );
        assert!(lines[1].contains(":5:5: a host needs addr:"), "{text}");
        assert!(lines[2].contains(":7:1: unknown key `workerz`"), "{text}");
    }

    #[test]
    fn defaults_chains_and_margarita_shotgun_keys() {
        let plan = check(
            "defaults:\n  username: ops\n  module: lime.ko\n  agent: false\n  known_hosts: kh\njump_chains:\n  dmz: [\"bastion:2222\", {addr: inner, username: jumper}]\nworkers: auto\nhosts:\n  - addr: 10.0.0.1\n    jump: dmz\n  - addr: 10.0.0.2\n    port: 2200\n    username: root\n    jump_host: {addr: b2, port: 23}\n",
        )
        .unwrap();
        assert_eq!(plan.workers, Some(Workers::Auto));
        assert_eq!(plan.hosts.len(), 2);
        let first = &plan.hosts[0].job;
        let route: Vec<String> = first.route.iter().map(|e| e.to_string()).collect();
        assert_eq!(route.len(), 3, "{route:?}");
        assert_eq!(first.route[0].user, "ops");
        assert_eq!(first.route[0].port, 2222);
        assert_eq!(first.route[1].user, "jumper");
        assert_eq!(first.target().host, "10.0.0.1");
        assert!(first.host_keys.known_hosts.ends_with("kh"));
        let second = &plan.hosts[1];
        assert_eq!(second.name, "10.0.0.2:2200");
        assert_eq!(second.job.route[0].user, "root");
        assert_eq!(second.job.route[0].port, 23);
        assert_eq!(second.job.target().user, "root");
        assert!(!second.job.target().credentials.use_agent);
    }

    #[test]
    fn a_bare_string_is_a_host_address() {
        let plan = check("defaults: {module: lime.ko}\nhosts: [10.0.0.7, {addr: b}]\n").unwrap();
        assert_eq!(plan.hosts[0].name, "10.0.0.7");
        assert_eq!(plan.hosts[1].job.target().host, "b");
        let empty = check("# nothing\n").err().unwrap().to_string();
        assert!(empty.ends_with("fleet.yaml: the fleet file is empty; it needs at least hosts: (see config.example.yaml)"), "{empty}");
    }

    #[test]
    fn without_a_module_auto_and_kcore_read_proc_kcore() {
        let plan = check(
            "hosts:\n  - {addr: a}\n  - {addr: b, method: kcore, digest: false}\n  - {addr: c, module: lime.ko, method: lime, compress: true}\n",
        )
        .unwrap();
        use crate::pipeline::source::Method;
        let [a, b, c] = &plan.hosts[..] else { panic!() };
        assert_eq!(a.job.source.method, Method::Auto);
        assert!(a.job.module.file().unwrap().bytes.is_empty());
        assert_eq!(b.job.source.method, Method::Kcore);
        assert!(!b.job.source.digest);
        assert_eq!(c.job.source.method, Method::Lime);
        assert!(c.job.source.compress);
        assert!(!c.job.module.file().unwrap().bytes.is_empty());
    }

    #[test]
    fn inline_passwords_need_the_opt_in() {
        let errors = check("hosts:\n  - addr: a\n    module: lime.ko\n    password: hunter2\n")
            .err()
            .unwrap()
            .to_string();
        assert!(
            errors.contains(":4:15: password written in the file"),
            "{errors}"
        );
        let plan = check(
            "allow_inline_passwords: true\nhosts:\n  - addr: a\n    module: lime.ko\n    password: hunter2\n",
        )
        .unwrap();
        assert_eq!(plan.warnings.len(), 1);
        assert!(!plan.warnings[0].contains("hunter2"));
    }

    #[test]
    fn sudo_modes_are_inherited_and_the_password_source_is_named() {
        use crate::target::SudoMode;
        // PATH is always set; setting a variable here would race other test threads.
        let plan = check(
            "defaults: {module: lime.ko, sudo: never}\nhosts:\n  - {addr: a}\n  - {addr: b, sudo: auto, sudo_password_env: PATH}\n  - {addr: c, sudo: true}\n  - {addr: d, sudo: always}\n",
        )
        .unwrap();
        let modes: Vec<SudoMode> = plan.hosts.iter().map(|h| h.job.sudo.mode).collect();
        assert_eq!(
            modes,
            [
                SudoMode::Never,
                SudoMode::Auto,
                SudoMode::Always,
                SudoMode::Always
            ]
        );
        assert_eq!(
            plan.hosts[1].job.sudo.password_from.as_deref(),
            Some("sudo_password_env PATH")
        );
        assert!(plan.hosts[0].job.sudo.password_from.is_none());
        let default = check("hosts: [{addr: a, module: lime.ko}]\n").unwrap();
        assert_eq!(default.hosts[0].job.sudo.mode, SudoMode::Auto);
    }

    #[test]
    fn shards_and_workers() {
        assert_eq!(parse_shard("2/5"), Ok((2, 5)));
        for bad in ["0/3", "4/3", "1", "a/b", "1/0"] {
            assert!(parse_shard(bad).is_err(), "{bad}");
        }
        assert_eq!(Workers::parse("auto"), Some(Workers::Auto));
        assert_eq!(Workers::parse("0"), None);
        assert_eq!(Workers::Count(8).resolve(3), 3);
        assert!(Workers::Auto.resolve(100) >= 4);
    }

    #[test]
    fn the_example_file_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.yaml");
        let plan = load(
            &path,
            &Overrides {
                skip_file_checks: true,
                ..Overrides::default()
            },
        );
        // Only unset secret variables may fail here: the example names them.
        if let Err(errors) = &plan {
            for e in &errors.errors {
                assert!(e.message.contains("environment variable"), "{}", errors);
            }
        }
    }

    #[test]
    fn repository_supplies_modules_to_hosts_without_one() {
        let plan = check(
            "repository: {enabled: true, url: \"https://modules.example/lime\"}\nhosts:\n  - {addr: a}\n  - {addr: b, module: lime.ko}\n  - {addr: c, method: kcore}\n",
        )
        .unwrap();
        let [a, b, c] = &plan.hosts[..] else { panic!() };
        match &a.job.module {
            crate::capture::ModuleSource::Repository(spec) => {
                assert_eq!(spec.location.to_string(), "https://modules.example/lime/");
                assert_eq!(spec.key.origin, "built-in key");
            }
            crate::capture::ModuleSource::File(_) => panic!("a has no repository"),
        }
        // module: wins; kcore needs none.
        assert!(!b.job.module.file().unwrap().bytes.is_empty());
        assert!(c.job.module.file().unwrap().bytes.is_empty());

        for (text, expected) in [
            ("gpg_verify: false", "always verifies"),
            ("manifest: secondary", "one manifest"),
            (
                "url: \"https://x/\"\n  key: /nonexistent.pub",
                "neither a minisign public key",
            ),
            ("url: \"ftp://x/y\"", "not supported"),
        ] {
            let errors = check(&format!(
                "repository:\n  enabled: true\n  {text}\nhosts:\n  - {{addr: a}}\n"
            ))
            .err()
            .unwrap_or_else(|| panic!("{text} accepted"))
            .to_string();
            assert!(errors.contains(expected), "{text}: {errors}");
        }
    }
}

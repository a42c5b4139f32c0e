//! The walk of the file's top-level keys: settings for the whole run, then
//! every host, then the checks across hosts and the `--hosts`/`--shard` choice.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::hosts::Context;
use super::schema::{
    ANALYZE_KEYS, AWS_KEYS, BUCKET_KEYS, HOST_KEYS, LOGGING_KEYS, Map, PER_HOST_ONLY,
    REPOSITORY_KEYS, TOP_KEYS,
};
use super::{AnalyzeSpec, BucketSpec, Checker, FleetPlan, HostPlan, RepositorySpec, Workers};
use crate::fleet::yaml::{Node, Pos, Value};

impl Checker {
    pub(super) fn fleet(&mut self, doc: &Node, file: &Path) -> Option<FleetPlan> {
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
            return self.wrong_kind(hosts_node, "hosts", "a list");
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

        self.check_unique(&hosts);
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

    /// Names and output files must be unique, or reports and images collide.
    fn check_unique(&mut self, hosts: &[HostPlan]) {
        let mut names: BTreeMap<String, Pos> = BTreeMap::new();
        let mut images: BTreeMap<PathBuf, Pos> = BTreeMap::new();
        for host in hosts {
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
            return self.wrong_kind(plugins_node, "analyze plugins", "a list");
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
    pub(super) fn bucket_map(&mut self, node: &Node) -> Option<BucketSpec> {
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
        for (key, slot, min, max) in [
            ("concurrency", &mut spec.concurrency, 1, 64),
            ("part_size_mib", &mut spec.part_size_mib, 8, 5120),
        ] {
            if let Some(n) = map.get(key) {
                *slot = self
                    .integer(n, &format!("bucket.{key}"), min, max)
                    .map(|v| v as u64);
                ok &= slot.is_some();
            }
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
}

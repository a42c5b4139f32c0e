//! The keys each mapping of the fleet file allows, and mappings read through
//! them: an unknown key is reported with the allowed ones and the closest.

use super::Checker;
use crate::fleet::yaml::{Node, Pos, Value};

pub(super) const TOP_KEYS: &[&str] = &[
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
pub(super) const HOST_KEYS: &[&str] = &[
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
pub(super) const PER_HOST_ONLY: &[&str] = &["addr", "name", "filename"];

pub(super) const HOP_KEYS: &[&str] = &[
    "addr",
    "port",
    "username",
    "user",
    "key",
    "key_passphrase_env",
    "password",
    "password_env",
];

pub(super) const LOGGING_KEYS: &[&str] = &["dir", "prefix"];
pub(super) const AWS_KEYS: &[&str] = &["bucket"];
pub(super) const BUCKET_KEYS: &[&str] = &[
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
pub(super) const REPOSITORY_KEYS: &[&str] =
    &["enabled", "url", "key", "gpg_verify", "manifest", "dir"];
pub(super) const ANALYZE_KEYS: &[&str] = &["plugins", "profile"];

/// A mapping node seen through its allowed keys.
pub(super) struct Map<'a> {
    pub(super) entries: Vec<(&'a str, &'a Node, Pos)>,
    pub(super) pos: Pos,
}

impl<'a> Map<'a> {
    pub(super) fn get(&self, key: &str) -> Option<&'a Node> {
        self.entries.iter().find(|(k, _, _)| *k == key).map(|e| e.1)
    }
    pub(super) fn key_pos(&self, key: &str) -> Option<Pos> {
        self.entries.iter().find(|(k, _, _)| *k == key).map(|e| e.2)
    }
}

/// Host values: a flag's, else the host's own entry, else `defaults:`.
pub(super) struct Layered<'a> {
    pub(super) flags: &'a Map<'a>,
    pub(super) host: &'a Map<'a>,
    pub(super) defaults: Option<&'a Map<'a>>,
}

impl<'a> Layered<'a> {
    pub(super) fn get(&self, key: &str) -> Option<&'a Node> {
        (self.flags.get(key))
            .or_else(|| self.host.get(key))
            .or_else(|| self.defaults.and_then(|d| d.get(key)))
    }
    /// The first of several spellings (`user`/`username`) that is set.
    pub(super) fn get_any(&self, keys: &[&str]) -> Option<&'a Node> {
        keys.iter()
            .find_map(|k| self.host.get(k))
            .or_else(|| keys.iter().find_map(|k| self.defaults?.get(k)))
    }
}

impl Checker {
    pub(super) fn map<'a>(
        &mut self,
        node: &'a Node,
        what: &str,
        allowed: &[&str],
    ) -> Option<Map<'a>> {
        let Value::Map(entries) = &node.value else {
            return self.wrong_kind(node, what, "a mapping (key: value lines)");
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

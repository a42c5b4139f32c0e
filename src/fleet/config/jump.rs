//! Jump hosts: named `jump_chains:`, a host's `jump:` (a chain's name or
//! its own hops) and MargaritaShotgun's single `jump_host:`.

use std::collections::HashMap;
use std::path::PathBuf;

use super::Checker;
use super::schema::{HOP_KEYS, Layered};
use crate::fleet::yaml::{Node, Pos, Value};
use crate::util::secret::Secret;

/// `jump_chains:` by name: where each is defined and its hops.
pub(super) type Chains = HashMap<String, (Pos, Vec<HopSpec>)>;

#[derive(Clone, Debug, Default)]
pub(super) struct HopSpec {
    #[allow(dead_code)]
    pos: Pos,
    pub(super) addr: String,
    pub(super) port: u16,
    pub(super) user: Option<String>,
    pub(super) key: Option<(Node, PathBuf)>,
    pub(super) key_passphrase_env: Option<Node>,
    pub(super) password: Option<Secret>,
}

impl Checker {
    pub(super) fn jump_chains(&mut self, node: &Node) -> Chains {
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
            _ => {
                return self
                    .wrong_kind(node, what, "a list of hops")
                    .unwrap_or_default();
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
        hop.password = self.secret(
            "password",
            map.get("password_env"),
            map.get("password"),
            &format!("jump host {}", hop.addr),
        );
        Some(hop)
    }

    /// The hops in front of one host: `jump: NAME` (a chain), `jump: [hops]`,
    /// or MargaritaShotgun's `jump_host:`.
    pub(super) fn host_hops(&mut self, layered: &Layered, chains: &Chains) -> Vec<HopSpec> {
        let jump = layered.get("jump");
        let jump_host = layered.get("jump_host");
        match (jump, jump_host) {
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
                Value::Str(chain) if !chain.contains(['@', ':', ',']) => match chains.get(chain) {
                    Some((_, hops)) => hops.clone(),
                    None => {
                        let mut names: Vec<&str> = chains.keys().map(String::as_str).collect();
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
                },
                _ => self.hops(j, "jump"),
            },
            (None, Some(h)) => self.hop(h, "jump_host").into_iter().collect(),
            (None, None) => Vec::new(),
        }
    }
}

//! Secrets and key files: `*_env` variables read now (not halfway through
//! the fleet), inline secrets only with the opt-in, and each private key read
//! and decrypted once however many hosts and hops name it.

use std::path::Path;
use std::sync::Arc;

use super::Checker;
use crate::fleet::yaml::{Node, Value};
use crate::transport::LoadedKey;
use crate::transport::keyfile::{decode_secret_key, needs_passphrase};
use crate::util::secret::Secret;

impl Checker {
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

    /// `KEY_env: VARIABLE`, or `KEY:` inline, which wins when both are given.
    pub(super) fn secret(
        &mut self,
        key: &str,
        env: Option<&Node>,
        inline: Option<&Node>,
        owner: &str,
    ) -> Option<Secret> {
        let mut secret = env.and_then(|n| self.env_secret(n, &format!("{key}_env")));
        if let Some(n) = inline {
            secret = self.inline_secret(n, key, owner);
        }
        secret
    }

    /// Reads and decrypts a key once; errors point at the `key:` value.
    pub(super) fn load_key(
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
}

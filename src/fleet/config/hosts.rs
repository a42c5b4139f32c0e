//! One host entry: its keys over `defaults:` (and the flags over both), read
//! concern by concern into the `CaptureJob` of that host.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::jump::{Chains, HopSpec};
use super::schema::{HOST_KEYS, Layered, Map};
use super::values::found;
use super::{BucketSpec, Checker, HostPlan, RepositorySpec};
use crate::capture::{CaptureJob, SudoPolicy};
use crate::fleet::yaml::{Node, Value};
use crate::pipeline::sink::s3::S3Spec;
use crate::target::SudoMode;
use crate::transport::{Credentials, Endpoint, HostKeyPolicy, LoadedKey, SshOptions};
use crate::util::secret::Secret;

/// What every host shares: the flags, `defaults:` and the top-level settings.
pub(super) struct Context<'a> {
    /// Settings from flags, above every host's.
    pub(super) flags: &'a Map<'a>,
    /// `--bucket`: every host's bucket is `bucket`.
    pub(super) bucket_flag: bool,
    pub(super) defaults: Option<&'a Map<'a>>,
    pub(super) chains: &'a Chains,
    pub(super) output_dir: &'a Path,
    pub(super) repository: Option<&'a RepositorySpec>,
    pub(super) bucket: Option<&'a BucketSpec>,
    /// `output_dir:` was given at the top: keep local images beside a bucket.
    pub(super) output_dir_given: bool,
    /// `analyze:` was given: every host needs a local image.
    pub(super) analyze: bool,
}

/// How the host is logged into; hops without a key of their own use its key.
struct Login {
    user: Option<String>,
    password: Option<Secret>,
    key: Option<LoadedKey>,
    use_agent: bool,
}

/// How the capture becomes root on the host.
struct Sudo {
    mode: Option<SudoMode>,
    /// The host's own sudo password; without one, the login password is tried.
    password: Option<Secret>,
    password_from: Option<String>,
}

/// Host-key policy and time limits of the host's session.
struct Session {
    known_hosts: Option<PathBuf>,
    accept_new: bool,
    connect_timeout: u64,
    stream_timeout: u64,
}

/// Where the image goes: a local file, a bucket, or both.
struct Output {
    image_path: Option<PathBuf>,
    local_image: bool,
    s3: Option<S3Spec>,
}

impl Checker {
    pub(super) fn host(&mut self, node: &Node, context: &Context) -> Option<HostPlan> {
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

    /// Checks every key of the entry before giving up on it, so that all its
    /// problems are reported. Key files and modules are read once, by the
    /// first host (the host's key before its hops') that names them, so
    /// errors about them point there.
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
        let owner = name.clone().unwrap_or_default();
        let login = self.login(&layered, &owner);
        let sudo = self.sudo(&layered, &owner);
        let session = self.session(&layered);
        let force = self.flag(&layered, "force") || self.overrides.force;
        let source = self.source_options(&layered);
        let module = self.module_source(
            &layered,
            context.repository,
            source.as_ref(),
            map.pos,
            &owner,
        );
        let output = self.output(node, &map, &layered, context, name.as_deref());
        let hops = self.host_hops(&layered, context.chains);

        let (source, sudo_mode, addr, port, name, user, module, image_path) = (
            source?,
            sudo.mode?,
            addr?,
            port?,
            name?,
            login.user?,
            module?,
            output.image_path?,
        );
        let Some(known_hosts) = session.known_hosts else {
            self.error(
                node.pos,
                "HOME is not set, so there is no default known_hosts; give known_hosts:",
            );
            return None;
        };
        let sudo_password = sudo.password.or_else(|| login.password.clone());
        let target = Endpoint {
            host: addr,
            port,
            user,
            credentials: Credentials {
                key: login.key,
                use_agent: login.use_agent,
                password: login.password,
            },
        };
        Some(HostPlan {
            name,
            pos: node.pos,
            job: CaptureJob {
                route: self.route(hops, target),
                host_keys: HostKeyPolicy {
                    known_hosts,
                    accept_new: session.accept_new,
                },
                ssh: SshOptions {
                    connect_timeout: Duration::from_secs(session.connect_timeout),
                    keepalive_interval: Duration::from_secs(15),
                },
                module,
                image_path,
                local_image: output.local_image,
                s3: output.s3,
                sudo_password,
                sudo: SudoPolicy {
                    mode: sudo_mode,
                    password_from: sudo.password_from,
                },
                force,
                dry_run: self.overrides.dry_run,
                stream_idle_timeout: Duration::from_secs(session.stream_timeout),
                source,
            },
        })
    }

    /// User, password (by reference; inline only when allowed), key and agent.
    fn login(&mut self, layered: &Layered, owner: &str) -> Login {
        let user = match layered.get_any(&["user", "username"]) {
            Some(n) => self.string(n, "username"),
            None => Some(crate::capture::local_user()),
        };
        let password = self.secret(
            "password",
            layered.get("password_env"),
            layered.get("password"),
            owner,
        );
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
        Login {
            user,
            password,
            key,
            use_agent,
        }
    }

    fn sudo(&mut self, layered: &Layered, owner: &str) -> Sudo {
        let password = self.secret(
            "sudo_password",
            layered.get("sudo_password_env"),
            layered.get("sudo_password"),
            owner,
        );
        let mode = match layered.get("sudo") {
            None => Some(SudoMode::Auto),
            Some(n) => {
                let parsed = match &n.value {
                    Value::Bool(true) => Some(SudoMode::Always),
                    Value::Bool(false) => Some(SudoMode::Never),
                    Value::Str(text) => SudoMode::parse(text),
                    _ => None,
                };
                if parsed.is_none() {
                    self.error(
                        n.pos,
                        format!(
                            "sudo must be auto, never or always (or true for always, false for never), found {}",
                            found(&n.value)
                        ),
                    );
                }
                parsed
            }
        };
        Sudo {
            mode,
            password,
            password_from: sudo_password_from(layered),
        }
    }

    fn session(&mut self, layered: &Layered) -> Session {
        let known_hosts = match layered.get("known_hosts") {
            Some(n) => self.path(n, "known_hosts"),
            None => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".ssh/known_hosts")),
        };
        Session {
            known_hosts,
            accept_new: self.flag(layered, "accept_new_host_keys")
                || self.overrides.accept_new_host_keys,
            connect_timeout: self.seconds(layered, "connect_timeout", 20),
            stream_timeout: self.seconds(layered, "stream_timeout", 120),
        }
    }

    /// A true/false key; unset (or wrong, which is reported) is false.
    fn flag(&mut self, layered: &Layered, key: &str) -> bool {
        layered
            .get(key)
            .and_then(|n| self.boolean(n, key))
            .unwrap_or(false)
    }

    fn seconds(&mut self, layered: &Layered, key: &str, default: u64) -> u64 {
        match layered.get(key) {
            Some(n) => self
                .integer(n, &format!("{key} (seconds)"), 1, 86_400)
                .map_or(default, |s| s as u64),
            None => default,
        }
    }

    /// A host's own bucket replaces the top one; with a bucket, the image is
    /// written locally only when an output_dir is given too.
    fn output(
        &mut self,
        node: &Node,
        map: &Map,
        layered: &Layered,
        context: &Context,
        name: Option<&str>,
    ) -> Output {
        let output_dir = match layered.get("output_dir") {
            Some(n) => self.path(n, "output_dir"),
            None => Some(context.output_dir.to_path_buf()),
        };
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
        let filename = self.filename(map, name);
        Output {
            image_path: output_dir.zip(filename).map(|(dir, file)| dir.join(file)),
            local_image,
            s3,
        }
    }

    /// `filename:`, else one made from the host's name.
    fn filename(&mut self, map: &Map, name: Option<&str>) -> Option<String> {
        match map.get("filename") {
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
            None => name.map(crate::capture::default_filename),
        }
    }

    /// The hops, then the target; a hop without its own user or key uses the target's.
    fn route(&mut self, hops: Vec<HopSpec>, target: Endpoint) -> Vec<Endpoint> {
        let mut route = Vec::new();
        for hop in hops {
            let hop_key = match &hop.key {
                Some((n, path)) => self.load_key(
                    n,
                    path,
                    hop.key_passphrase_env.as_ref(),
                    hop.password.as_ref(),
                ),
                None => target.credentials.key.clone(),
            };
            route.push(Endpoint {
                host: hop.addr,
                port: hop.port,
                user: hop.user.unwrap_or_else(|| target.user.clone()),
                credentials: Credentials {
                    key: hop_key,
                    use_agent: target.credentials.use_agent,
                    password: hop.password,
                },
            });
        }
        route.push(target);
        route
    }
}

/// Where the sudo password comes from, by key and variable name (never the
/// value), for the message when sudo refuses it.
fn sudo_password_from(layered: &Layered) -> Option<String> {
    let env_name = |key: &str| match layered.get(key).map(|n| &n.value) {
        Some(Value::Str(var)) => format!("{key} {var}"),
        _ => key.to_string(),
    };
    if layered.get("sudo_password").is_some() {
        Some("sudo_password (inline)".to_string())
    } else if layered.get("sudo_password_env").is_some() {
        Some(env_name("sudo_password_env"))
    } else if layered.get("password").is_some() {
        Some("password (inline; the login password)".to_string())
    } else if layered.get("password_env").is_some() {
        Some(format!("{} (the login password)", env_name("password_env")))
    } else {
        None
    }
}

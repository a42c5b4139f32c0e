//! SSH transport: the only module that speaks SSH.
//!
//! A [`Session`] is a chain of russh connections: the first over TCP, each
//! later one carried inside a direct-tcpip channel of the one before (what
//! OpenSSH's `-J` does). Every hop's host key is checked against known_hosts
//! before any credential is sent. The session offers three things to the rest
//! of mshot: run a command (with stdin), start a command and collect it later,
//! and open a TCP channel to an address as seen from the target.

pub mod keyfile;
pub mod known_hosts;
pub mod route;
mod tunnel;

pub use tunnel::Tunnel;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::agent::AgentIdentity;
use russh::keys::agent::client::AgentClient;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{ChannelMsg, Disconnect};

use crate::util::secret::Secret;

/// One SSH server on the way to the target (or the target itself).
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub credentials: Credentials,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}@{}",
            self.user,
            known_hosts::lookup_name(&self.host, self.port)
        )
    }
}

/// What we may offer a server, tried in this order: key, agent, password.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    pub key: Option<LoadedKey>,
    pub use_agent: bool,
    pub password: Option<Secret>,
}

#[derive(Clone)]
pub struct LoadedKey {
    pub path: PathBuf,
    pub key: Arc<PrivateKey>,
}

impl std::fmt::Debug for LoadedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LoadedKey({})", self.path.display())
    }
}

/// How host keys are checked.
#[derive(Clone, Debug)]
pub struct HostKeyPolicy {
    pub known_hosts: PathBuf,
    /// Record keys of hosts the file does not know yet (never replaces a known key).
    pub accept_new: bool,
}

#[derive(Clone, Debug)]
pub struct SshOptions {
    pub connect_timeout: Duration,
    pub keepalive_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: std::io::Error,
    },
    #[error(
        "timed out after {seconds} s connecting to {endpoint}; check the address, port and any firewall"
    )]
    ConnectTimeout { endpoint: String, seconds: u64 },
    #[error(
        "host key of {host} is not in {known_hosts} (offered {fingerprint}); verify the fingerprint out of band, then add it (ssh-keyscan) or rerun with --accept-new-host-keys"
    )]
    UnknownHostKey {
        host: String,
        fingerprint: String,
        known_hosts: String,
    },
    #[error(
        "HOST KEY CHANGED for {host}: {known_hosts} line {line} has {known}, the server offered {offered}; this may be an attack; if the change is legitimate, remove the old line (ssh-keygen -R) and verify the new key"
    )]
    HostKeyChanged {
        host: String,
        known_hosts: String,
        line: usize,
        known: String,
        offered: String,
    },
    #[error("host key {fingerprint} of {host} is marked @revoked in {known_hosts} line {line}")]
    HostKeyRevoked {
        host: String,
        fingerprint: String,
        known_hosts: String,
        line: usize,
    },
    #[error("cannot read known_hosts file {path}: {source}")]
    KnownHostsUnreadable {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot record the host key of {host} in {path}: {source}")]
    KnownHostsWrite {
        host: String,
        path: String,
        source: std::io::Error,
    },
    #[error("{host} presented a host certificate; mshot checks plain host keys only")]
    HostCertificate { host: String },
    #[error(
        "authentication failed for {endpoint} (tried: {tried}); check the user name, key or password"
    )]
    AuthFailed { endpoint: String, tried: String },
    #[error("SSH error with {endpoint}: {source}")]
    Protocol {
        endpoint: String,
        source: Box<russh::Error>,
    },
    #[error("{endpoint} refused a tunnel to {target}: {source}")]
    Tunnel {
        endpoint: String,
        target: String,
        source: Box<russh::Error>,
    },
    #[error("connection to {endpoint} was closed")]
    Closed { endpoint: String },
}

/// Result of a remote command.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    /// None when the server closed the channel without an exit status (killed, dropped).
    pub status: Option<u32>,
    pub signal: Option<String>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The first line of stderr, sanitised, for one-line error messages.
    pub fn stderr_line(&self) -> String {
        let text = String::from_utf8_lossy(&self.stderr);
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("");
        crate::util::sanitize::one_line(line)
    }

    pub fn describe_status(&self) -> String {
        match (&self.status, &self.signal) {
            (Some(code), _) => format!("exit status {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            (None, None) => "no exit status (connection closed?)".to_string(),
        }
    }
}

/// A connected chain of SSH sessions; the last one is the target.
pub struct Session {
    target: Handle<Verifier>,
    // Earlier hops carry the target's connection: they must outlive it.
    hops: Vec<Handle<Verifier>>,
    label: String,
}

/// A command started on the target; `wait` collects its output.
pub struct RunningCommand {
    task: tokio::task::JoinHandle<Result<ExecOutput, russh::Error>>,
    label: String,
}

impl RunningCommand {
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    pub async fn wait(self) -> Result<ExecOutput, SshError> {
        match self.task.await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(source)) => Err(SshError::Protocol {
                endpoint: self.label,
                source: Box::new(source),
            }),
            Err(_) => Err(SshError::Closed {
                endpoint: self.label,
            }),
        }
    }

    pub fn abort(&self) {
        self.task.abort();
    }
}

impl Session {
    /// Connects through `route`: jump hosts first, the target last.
    pub async fn connect(
        route: &[Endpoint],
        policy: &HostKeyPolicy,
        options: &SshOptions,
    ) -> Result<Session, SshError> {
        let mut handles: Vec<Handle<Verifier>> = Vec::with_capacity(route.len());
        for endpoint in route {
            let label = endpoint.to_string();
            let known = read_known_hosts(&policy.known_hosts)?;
            let config = Arc::new(client_config(options, &known, endpoint));
            let verifier = Verifier {
                host: endpoint.host.clone(),
                port: endpoint.port,
                policy: policy.clone(),
                rejection: Arc::new(Mutex::new(None)),
            };
            let rejection = verifier.rejection.clone();
            let connecting = async {
                match handles.last() {
                    None => {
                        let socket =
                            tokio::net::TcpStream::connect((endpoint.host.as_str(), endpoint.port))
                                .await
                                .map_err(|source| SshError::Connect {
                                    endpoint: label.clone(),
                                    source,
                                })?;
                        let _ = socket.set_nodelay(true);
                        // russh reads each packet's length, then its body:
                        // two syscalls per 32 KiB packet without a buffer.
                        let socket = tokio::io::BufReader::with_capacity(READ_BUFFER, socket);
                        client::connect_stream(config, socket, verifier).await
                    }
                    Some(previous) => {
                        let channel = previous
                            .channel_open_direct_tcpip(
                                endpoint.host.clone(),
                                endpoint.port as u32,
                                "127.0.0.1",
                                0,
                            )
                            .await
                            .map_err(|source| SshError::Tunnel {
                                endpoint: handles_label(route, handles.len() - 1),
                                target: known_hosts::lookup_name(&endpoint.host, endpoint.port),
                                source: Box::new(source),
                            })?;
                        client::connect_stream(config, channel.into_stream(), verifier).await
                    }
                }
                .map_err(|source| {
                    let stashed = rejection.lock().ok().and_then(|mut slot| slot.take());
                    stashed.unwrap_or(SshError::Protocol {
                        endpoint: label.clone(),
                        source: Box::new(source),
                    })
                })
            };
            let mut handle = tokio::time::timeout(options.connect_timeout, connecting)
                .await
                .map_err(|_| SshError::ConnectTimeout {
                    endpoint: label.clone(),
                    seconds: options.connect_timeout.as_secs(),
                })??;
            authenticate(&mut handle, endpoint).await?;
            tracing::debug!(endpoint = %label, "authenticated");
            handles.push(handle);
        }
        let target = handles.pop().ok_or_else(|| SshError::Closed {
            endpoint: "(empty route)".into(),
        })?;
        let label = route.last().map(|e| e.to_string()).unwrap_or_default();
        Ok(Session {
            target,
            hops: handles,
            label,
        })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn is_closed(&self) -> bool {
        self.target.is_closed() || self.hops.iter().any(|h| h.is_closed())
    }

    /// Starts `command`, writes `stdin` to it and closes its input; returns at once.
    pub async fn start(&self, command: &str, stdin: Vec<u8>) -> Result<RunningCommand, SshError> {
        let mut channel = self
            .target
            .channel_open_session()
            .await
            .map_err(|source| self.protocol(source))?;
        channel
            .exec(true, command.as_bytes())
            .await
            .map_err(|source| self.protocol(source))?;
        let task = tokio::spawn(async move {
            if !stdin.is_empty() {
                channel.data_bytes(stdin).await?;
            }
            channel.eof().await?;
            let mut out = ExecOutput {
                status: None,
                signal: None,
                stdout: Vec::new(),
                stderr: Vec::new(),
            };
            while let Some(message) = channel.wait().await {
                match message {
                    ChannelMsg::Data { data } => out.stdout.extend_from_slice(&data),
                    ChannelMsg::ExtendedData { data, ext: 1 } => {
                        out.stderr.extend_from_slice(&data)
                    }
                    ChannelMsg::ExitStatus { exit_status } => out.status = Some(exit_status),
                    ChannelMsg::ExitSignal { signal_name, .. } => {
                        out.signal = Some(format!("{signal_name:?}"))
                    }
                    _ => {}
                }
            }
            Ok(out)
        });
        Ok(RunningCommand {
            task,
            label: self.label.clone(),
        })
    }

    /// Starts `command` and hands its stdout over as it arrives (a bounded
    /// queue, so a slow reader slows the remote side through the SSH window);
    /// the returned `RunningCommand` collects stderr and the exit status.
    pub async fn start_stream(
        &self,
        command: &str,
        stdin: Vec<u8>,
    ) -> Result<(tokio::sync::mpsc::Receiver<bytes::Bytes>, RunningCommand), SshError> {
        let mut channel = self
            .target
            .channel_open_session()
            .await
            .map_err(|source| self.protocol(source))?;
        channel
            .exec(true, command.as_bytes())
            .await
            .map_err(|source| self.protocol(source))?;
        let (sender, receiver) = tokio::sync::mpsc::channel::<bytes::Bytes>(64);
        let task = tokio::spawn(async move {
            if !stdin.is_empty() {
                channel.data_bytes(stdin).await?;
            }
            channel.eof().await?;
            let mut out = ExecOutput {
                status: None,
                signal: None,
                stdout: Vec::new(),
                stderr: Vec::new(),
            };
            while let Some(message) = channel.wait().await {
                match message {
                    // The reader gave up: closing the channel stops the remote command.
                    ChannelMsg::Data { data }
                        if sender
                            .send(bytes::Bytes::copy_from_slice(&data))
                            .await
                            .is_err() =>
                    {
                        let _ = channel.close().await;
                        break;
                    }
                    ChannelMsg::ExtendedData { data, ext: 1 } => {
                        out.stderr.extend_from_slice(&data)
                    }
                    ChannelMsg::ExitStatus { exit_status } => out.status = Some(exit_status),
                    ChannelMsg::ExitSignal { signal_name, .. } => {
                        out.signal = Some(format!("{signal_name:?}"))
                    }
                    _ => {}
                }
            }
            Ok(out)
        });
        Ok((
            receiver,
            RunningCommand {
                task,
                label: self.label.clone(),
            },
        ))
    }

    /// Runs `command` to completion.
    pub async fn run(&self, command: &str, stdin: Vec<u8>) -> Result<ExecOutput, SshError> {
        self.start(command, stdin).await?.wait().await
    }

    /// Opens a channel to `host:port` as the target sees it (direct-tcpip).
    pub async fn open_tcp(&self, host: &str, port: u16) -> Result<Tunnel, SshError> {
        self.target
            .channel_open_direct_tcpip(host.to_string(), port as u32, "127.0.0.1", 0)
            .await
            .map(Tunnel::new)
            .map_err(|source| SshError::Tunnel {
                endpoint: self.label.clone(),
                target: format!("{host}:{port}"),
                source: Box::new(source),
            })
    }

    pub async fn close(self) {
        let _ = self
            .target
            .disconnect(Disconnect::ByApplication, "mshot done", "en")
            .await;
        for hop in self.hops.iter().rev() {
            let _ = hop
                .disconnect(Disconnect::ByApplication, "mshot done", "en")
                .await;
        }
    }

    fn protocol(&self, source: russh::Error) -> SshError {
        SshError::Protocol {
            endpoint: self.label.clone(),
            source: Box::new(source),
        }
    }
}

fn handles_label(route: &[Endpoint], index: usize) -> String {
    route.get(index).map(|e| e.to_string()).unwrap_or_default()
}

fn read_known_hosts(path: &Path) -> Result<String, SshError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(SshError::KnownHostsUnreadable {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// The buffer between the TCP socket and russh's packet reader.
const READ_BUFFER: usize = 256 << 10;

fn client_config(
    options: &SshOptions,
    known_hosts_text: &str,
    endpoint: &Endpoint,
) -> client::Config {
    let mut preferred = russh::Preferred::default();
    // Ask for a host key type we can verify, as OpenSSH does: otherwise a server with
    // several keys could offer one the file does not list and be refused as unknown.
    let known = known_hosts::known_algorithms(known_hosts_text, &endpoint.host, endpoint.port);
    if !known.is_empty() {
        let mut ordered: Vec<russh::keys::Algorithm> = Vec::new();
        for name in &known {
            for algorithm in preferred.key.iter() {
                let matches = algorithm.to_string() == *name
                    || (name == "ssh-rsa"
                        && matches!(algorithm, russh::keys::Algorithm::Rsa { .. }));
                if matches && !ordered.contains(algorithm) {
                    ordered.push(algorithm.clone());
                }
            }
        }
        if !ordered.is_empty() {
            preferred.key = ordered.into();
        }
    }
    preferred.cipher = cipher_order().into();
    client::Config {
        // 4 MiB windows. OpenSSH's 2 MiB caps a 50 ms path at 40 MiB/s, this
        // at 80 MiB/s. The target's sshd buffers up to the window, and its
        // CPU per GiB grows with it (benches/tunnel.sh, aes256-gcm: 1.04 s
        // at 2 MiB, 1.12 at 4, 1.34 at 8, 2.0 at 16); on a busy target that
        // is the capture's own speed.
        window_size: 4 * 1024 * 1024,
        maximum_packet_size: 65535,
        channel_buffer_size: 256,
        keepalive_interval: Some(options.keepalive_interval),
        keepalive_max: 4,
        nodelay: true,
        preferred,
        ..Default::default()
    }
}

/// The ciphers mshot offers, best first: ChaCha20-Poly1305 as OpenSSH does,
/// since it is fast on any CPU. AES-GCM first was tried: cheaper where the
/// target has AES instructions, but the target's CPU cannot be known before
/// the handshake, and on the lab guest (a CPU model without AES) captures
/// took 1.35x as long. aes128-gcm is in the list (russh's default leaves it
/// out) so that servers allowing only it still connect.
fn cipher_order() -> Vec<russh::cipher::Name> {
    use russh::cipher::{
        AES_128_CTR, AES_128_GCM, AES_192_CTR, AES_256_CTR, AES_256_GCM, CHACHA20_POLY1305,
    };
    vec![
        CHACHA20_POLY1305,
        AES_256_GCM,
        AES_128_GCM,
        AES_256_CTR,
        AES_192_CTR,
        AES_128_CTR,
    ]
}

async fn authenticate(handle: &mut Handle<Verifier>, endpoint: &Endpoint) -> Result<(), SshError> {
    let label = endpoint.to_string();
    let protocol = |source| SshError::Protocol {
        endpoint: label.clone(),
        source: Box::new(source),
    };
    let mut tried = Vec::new();
    if let Some(key) = &endpoint.credentials.key {
        let hash = rsa_hash(handle, &key.key.algorithm())
            .await
            .map_err(protocol)?;
        let result = handle
            .authenticate_publickey(
                endpoint.user.clone(),
                PrivateKeyWithHashAlg::new(key.key.clone(), hash),
            )
            .await
            .map_err(protocol)?;
        if result.success() {
            return Ok(());
        }
        tried.push(format!("key {}", key.path.display()));
    }
    if endpoint.credentials.use_agent
        && let Ok(mut agent) = AgentClient::connect_env().await
    {
        let identities = agent.request_identities().await.unwrap_or_default();
        for identity in identities {
            let AgentIdentity::PublicKey { key, .. } = identity else {
                continue;
            };
            let hash = rsa_hash(handle, &key.algorithm()).await.map_err(protocol)?;
            let fingerprint = known_hosts::fingerprint(&key);
            match handle
                .authenticate_publickey_with(endpoint.user.clone(), key, hash, &mut agent)
                .await
            {
                Ok(result) if result.success() => return Ok(()),
                _ => tried.push(format!("agent key {fingerprint}")),
            }
        }
    }
    if let Some(password) = &endpoint.credentials.password {
        let result = handle
            .authenticate_password(endpoint.user.clone(), password.expose())
            .await
            .map_err(protocol)?;
        if result.success() {
            return Ok(());
        }
        tried.push("password".into());
    }
    if tried.is_empty() {
        tried.push("nothing: give --key, --password or run an ssh-agent".into());
    }
    Err(SshError::AuthFailed {
        endpoint: label,
        tried: tried.join(", "),
    })
}

/// The signature hash to use with an RSA key: the best the server supports.
async fn rsa_hash(
    handle: &Handle<Verifier>,
    algorithm: &russh::keys::Algorithm,
) -> Result<Option<russh::keys::HashAlg>, russh::Error> {
    if !algorithm.clone().is_rsa() {
        return Ok(None);
    }
    Ok(handle.best_supported_rsa_hash().await?.flatten())
}

/// Checks each server's host key against known_hosts before anything else is sent.
struct Verifier {
    host: String,
    port: u16,
    policy: HostKeyPolicy,
    rejection: Arc<Mutex<Option<SshError>>>,
}

impl Verifier {
    fn verify(&self, server_key: &PublicKeyOrCertificate) -> Result<(), SshError> {
        let host = known_hosts::lookup_name(&self.host, self.port);
        let known_hosts = self.policy.known_hosts.display().to_string();
        let PublicKeyOrCertificate::PublicKey { key, .. } = server_key else {
            return Err(SshError::HostCertificate { host });
        };
        let contents = read_known_hosts(&self.policy.known_hosts)?;
        match known_hosts::check(&contents, &self.host, self.port, key) {
            known_hosts::Verdict::Known => Ok(()),
            known_hosts::Verdict::Unknown if self.policy.accept_new => {
                known_hosts::learn(&self.policy.known_hosts, &self.host, self.port, key).map_err(
                    |source| SshError::KnownHostsWrite {
                        host: host.clone(),
                        path: known_hosts.clone(),
                        source,
                    },
                )?;
                tracing::warn!(
                    "recorded new host key for {host} ({}) in {known_hosts}",
                    known_hosts::fingerprint(key)
                );
                Ok(())
            }
            known_hosts::Verdict::Unknown => Err(SshError::UnknownHostKey {
                host,
                fingerprint: known_hosts::fingerprint(key),
                known_hosts,
            }),
            known_hosts::Verdict::Changed {
                line,
                known_fingerprint,
            } => Err(SshError::HostKeyChanged {
                host,
                known_hosts,
                line,
                known: known_fingerprint,
                offered: known_hosts::fingerprint(key),
            }),
            known_hosts::Verdict::Revoked { line } => Err(SshError::HostKeyRevoked {
                host,
                fingerprint: known_hosts::fingerprint(key),
                known_hosts,
                line,
            }),
        }
    }
}

impl client::Handler for Verifier {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        match self.verify(server_key) {
            Ok(()) => Ok(true),
            Err(reason) => {
                if let Ok(mut slot) = self.rejection.lock() {
                    *slot = Some(reason);
                }
                Ok(false)
            }
        }
    }
}

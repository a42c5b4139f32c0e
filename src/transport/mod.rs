//! SSH transport: the only module that speaks SSH.
//!
//! A [`Session`] is a chain of russh connections: the first over TCP, each
//! later one carried inside a direct-tcpip channel of the one before (what
//! OpenSSH's `-J` does). Every hop's host key is checked against known_hosts
//! before any credential is sent. The session offers three things to the rest
//! of mshot: run a command (with stdin), start a command and collect it later,
//! and open a TCP channel to an address as seen from the target.

mod exec;
mod handshake;
pub mod keyfile;
pub mod known_hosts;
pub mod route;
mod sftp;
mod tunnel;

pub use exec::{ExecOutput, RunningCommand};
use handshake::{READ_BUFFER, Verifier, authenticate, client_config, read_known_hosts};
pub use sftp::{SftpError, SftpFile};
pub use tunnel::{ExecStream, Tunnel};

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::PrivateKey;
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

/// A connected chain of SSH sessions; the last one is the target.
pub struct Session {
    target: Handle<Verifier>,
    // Earlier hops carry the target's connection: they must outlive it.
    hops: Vec<Handle<Verifier>>,
    label: String,
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
        self.exec(command, stdin, None).await
    }

    /// Starts `command` and hands its stdout over as it arrives (a bounded
    /// queue, so a slow reader slows the remote side through the SSH window);
    /// the returned `RunningCommand` collects stderr and the exit status.
    pub async fn start_stream(
        &self,
        command: &str,
        stdin: Vec<u8>,
    ) -> Result<(tokio::sync::mpsc::Receiver<bytes::Bytes>, RunningCommand), SshError> {
        let (sender, receiver) = tokio::sync::mpsc::channel::<bytes::Bytes>(64);
        let running = self.exec(command, stdin, Some(sender)).await?;
        Ok((receiver, running))
    }

    /// Runs `command` in a session channel: stdout is collected, or sent to
    /// `stdout_to` when given.
    async fn exec(
        &self,
        command: &str,
        stdin: Vec<u8>,
        stdout_to: Option<tokio::sync::mpsc::Sender<bytes::Bytes>>,
    ) -> Result<RunningCommand, SshError> {
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
            let mut out = ExecOutput::default();
            while let Some(message) = channel.wait().await {
                match message {
                    ChannelMsg::Data { data } => match &stdout_to {
                        None => out.stdout.extend_from_slice(&data),
                        Some(to) => {
                            if to.send(bytes::Bytes::copy_from_slice(&data)).await.is_err() {
                                // The reader gave up: closing the channel stops the command.
                                let _ = channel.close().await;
                                break;
                            }
                        }
                    },
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

    /// Starts `command`, writes `stdin_first` to it, and hands over its
    /// stdin and stdout as one byte stream (stderr is dropped).
    pub async fn open_exec(
        &self,
        command: &str,
        stdin_first: Vec<u8>,
    ) -> Result<ExecStream, SshError> {
        let channel = self
            .target
            .channel_open_session()
            .await
            .map_err(|source| self.protocol(source))?;
        channel
            .exec(true, command.as_bytes())
            .await
            .map_err(|source| self.protocol(source))?;
        if !stdin_first.is_empty() {
            channel
                .data(&stdin_first[..])
                .await
                .map_err(|source| self.protocol(source))?;
        }
        Ok(ExecStream(channel.into_stream()))
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

//! Setting up one hop: russh's client settings, the host key check that
//! runs before any credential is sent, and authentication.

use std::path::Path;
use std::sync::{Arc, Mutex};

use russh::client::{self, Handle};
use russh::keys::agent::AgentIdentity;
use russh::keys::agent::client::AgentClient;
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};

use super::{Endpoint, HostKeyPolicy, SshError, SshOptions, known_hosts};

pub(super) fn read_known_hosts(path: &Path) -> Result<String, SshError> {
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
pub(super) const READ_BUFFER: usize = 256 << 10;

pub(super) fn client_config(
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

pub(super) async fn authenticate(
    handle: &mut Handle<Verifier>,
    endpoint: &Endpoint,
) -> Result<(), SshError> {
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
pub(super) struct Verifier {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) policy: HostKeyPolicy,
    pub(super) rejection: Arc<Mutex<Option<SshError>>>,
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

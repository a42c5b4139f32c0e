//! SSH key pairs made with the real `ssh-keygen`, for clients and hosts.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use super::process::run;

/// The key algorithms the harness makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    Ed25519,
    /// RSA, 3072 bits (ssh-keygen's default).
    Rsa,
    /// ECDSA on NIST P-256.
    Ecdsa,
}

impl KeyType {
    /// The name `ssh-keygen -t` takes.
    pub fn keygen_name(self) -> &'static str {
        match self {
            KeyType::Ed25519 => "ed25519",
            KeyType::Rsa => "rsa",
            KeyType::Ecdsa => "ecdsa",
        }
    }

    /// The key's name in public key lines and known_hosts.
    pub fn algorithm(self) -> &'static str {
        match self {
            KeyType::Ed25519 => "ssh-ed25519",
            KeyType::Rsa => "ssh-rsa",
            KeyType::Ecdsa => "ecdsa-sha2-nistp256",
        }
    }
}

/// A key pair on disk, in OpenSSH format.
#[derive(Clone, Debug)]
pub struct KeyPair {
    /// The private key file (mode 0600).
    pub private: PathBuf,
    /// The `.pub` file beside it.
    pub public: PathBuf,
    pub kind: KeyType,
    /// The passphrase the private key is encrypted with, if any.
    pub passphrase: Option<String>,
    /// `<algorithm> <base64>`, without the comment.
    pub public_key: String,
}

impl KeyPair {
    /// Runs `ssh-keygen -t <kind> [-N passphrase]` into `dir/<name>` and
    /// `dir/<name>.pub`, replacing any key already there.
    pub fn generate(
        dir: &Path,
        name: &str,
        kind: KeyType,
        passphrase: Option<&str>,
    ) -> anyhow::Result<KeyPair> {
        let private = dir.join(name);
        let public = dir.join(format!("{name}.pub"));
        for p in [&private, &public] {
            if p.exists() {
                std::fs::remove_file(p)
                    .with_context(|| format!("cannot remove old key {}", p.display()))?;
            }
        }
        run(Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                kind.keygen_name(),
                "-N",
                passphrase.unwrap_or(""),
                "-C",
            ])
            .arg(format!("mshot-test-{name}"))
            .arg("-f")
            .arg(&private))?;
        KeyPair::from_files(private, public, kind, passphrase)
    }

    /// Copies the checked-in key `tests/fixtures/ssh-keys/<name>` (and its
    /// `.pub`) into `dir`, mode 0600 as ssh-keygen leaves it: for keys with a
    /// property that ssh-keygen makes only now and then.
    pub fn fixture(
        dir: &Path,
        name: &str,
        kind: KeyType,
        passphrase: Option<&str>,
    ) -> anyhow::Result<KeyPair> {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ssh-keys");
        let private = dir.join(name);
        let public = dir.join(format!("{name}.pub"));
        for (from, to) in [
            (source.join(name), &private),
            (source.join(format!("{name}.pub")), &public),
        ] {
            std::fs::copy(&from, to)
                .with_context(|| format!("cannot copy fixture key {}", from.display()))?;
        }
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600))?;
        KeyPair::from_files(private, public, kind, passphrase)
    }

    fn from_files(
        private: PathBuf,
        public: PathBuf,
        kind: KeyType,
        passphrase: Option<&str>,
    ) -> anyhow::Result<KeyPair> {
        let line = std::fs::read_to_string(&public)
            .with_context(|| format!("cannot read {}", public.display()))?;
        let public_key = line
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        anyhow::ensure!(
            public_key.starts_with(kind.algorithm()),
            "unexpected public key in {}: {line}",
            public.display()
        );
        Ok(KeyPair {
            private,
            public,
            kind,
            passphrase: passphrase.map(str::to_string),
            public_key,
        })
    }
}

//! minisign signatures over the repository manifest: the pinned public key,
//! verification (minisign-verify, small and dependency-free, on the capture
//! path) and, for `mshot repo`, key generation and signing (the minisign
//! crate, whose keys and signatures the `minisign` tool reads and writes too).

use std::path::Path;

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

/// The project's public key: it signs `kernel-modules/repo`, the repository the
/// Docker image ships as the default. Its secret key is never in the source tree.
pub const BUILTIN_PUBLIC_KEY: &str = include_str!("../../kernel-modules/mshot-modules.pub");

/// Where the password of an encrypted secret key comes from when not prompted.
pub const ENV_KEY_PASSWORD: &str = "MSHOT_REPOSITORY_KEY_PASSWORD";

/// A public key mshot trusts, with its minisign key ID for messages.
#[derive(Clone, Debug)]
pub struct TrustedKey {
    key: minisign_verify::PublicKey,
    /// minisign's spelling: 16 upper-case hex digits.
    pub id: String,
    /// Where the key came from ("built-in", a file name, "--repository-key").
    pub origin: String,
}

impl TrustedKey {
    pub fn builtin() -> anyhow::Result<TrustedKey> {
        TrustedKey::parse(BUILTIN_PUBLIC_KEY, "built-in key")
    }

    /// `--repository-key`: a minisign public key (the `RW...` line) or a file
    /// holding one (a minisign `.pub` file).
    pub fn from_arg(value: &str) -> anyhow::Result<TrustedKey> {
        let value = value.trim();
        if looks_like_key(value) {
            return TrustedKey::parse(value, "--repository-key");
        }
        let path = Path::new(value);
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow!(
                "--repository-key {value:?} is neither a minisign public key (RW...) nor a readable key file: {e}"
            )
        })?;
        TrustedKey::parse(&text, &path.display().to_string())
    }

    /// A key from the text of a `.pub` file or from its base64 line alone.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<TrustedKey> {
        let line = text
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
            .ok_or_else(|| anyhow!("{origin}: no minisign public key in it"))?;
        let raw = BASE64
            .decode(line)
            .map_err(|_| anyhow!("{origin}: not a minisign public key (bad base64)"))?;
        if raw.len() != 42 || &raw[..2] != b"Ed" {
            bail!(
                "{origin}: not a minisign Ed25519 public key ({} bytes, expected 42 starting with \"Ed\")",
                raw.len()
            );
        }
        let key = minisign_verify::PublicKey::from_base64(line)
            .map_err(|e| anyhow!("{origin}: not a minisign public key: {e}"))?;
        Ok(TrustedKey {
            key,
            id: key_id_hex(&raw[2..10]),
            origin: origin.to_string(),
        })
    }

    /// Checks `signature_text` (a `.minisig` file) over `data`. `name` is how
    /// the messages name the signed file (a URL or a path).
    pub fn verify(&self, data: &[u8], signature_text: &str, name: &str) -> anyhow::Result<Signed> {
        let signature = minisign_verify::Signature::decode(signature_text).map_err(|e| {
            anyhow!("{name}.minisig is not a minisign signature ({e}); refusing the repository")
        })?;
        let signer = signature_key_id(signature_text)
            .ok_or_else(|| anyhow!("{name}.minisig is not a minisign signature"))?;
        if signer != self.id {
            bail!(
                "{name}.minisig: expected a signature by key {} ({}), got one by key {signer}; wrong --repository-key, or not the repository you meant",
                self.id,
                self.origin
            );
        }
        self.key.verify(data, &signature, true).map_err(|_| {
            anyhow!(
                "{name}: signature check failed: expected a valid signature by key {}, got an invalid one (manifest SHA-256 {}); the manifest or its signature was changed after signing",
                self.id,
                crate::repository::sha256_hex(data)
            )
        })?;
        Ok(Signed {
            key_id: self.id.clone(),
            trusted_comment: signature.trusted_comment().to_string(),
        })
    }
}

/// What a good signature told us.
#[derive(Clone, Debug)]
pub struct Signed {
    pub key_id: String,
    /// The signed comment (minisign's "trusted comment": timestamp, file name).
    pub trusted_comment: String,
}

fn looks_like_key(value: &str) -> bool {
    value.len() == 56
        && value.starts_with("RW")
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
}

/// minisign prints key IDs as the little-endian u64 in upper-case hex.
fn key_id_hex(raw: &[u8]) -> String {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(raw);
    format!("{:016X}", u64::from_le_bytes(bytes))
}

/// The key ID in a `.minisig` (its second line: algorithm, key ID, signature).
fn signature_key_id(text: &str) -> Option<String> {
    let line = text.lines().nth(1)?.trim();
    let raw = BASE64.decode(line).ok()?;
    (raw.len() == 74).then(|| key_id_hex(&raw[2..10]))
}

// ------------------------------------------------------------------ signing

/// Writes a new key pair. The secret key is encrypted with a password (from
/// `MSHOT_REPOSITORY_KEY_PASSWORD` or a prompt) unless `unencrypted`.
pub fn keygen(secret_path: &Path, public_path: &Path, unencrypted: bool) -> anyhow::Result<String> {
    for path in [secret_path, public_path] {
        if path.exists() {
            bail!(
                "{} exists; mshot never overwrites a key (move it away first)",
                path.display()
            );
        }
    }
    let pair = if unencrypted {
        minisign::KeyPair::generate_unencrypted_keypair()
    } else {
        let password = match std::env::var(ENV_KEY_PASSWORD) {
            Ok(p) if !p.is_empty() => p,
            _ => {
                let first = rpassword::prompt_password("Password for the new secret key: ")
                    .map_err(|e| anyhow!("cannot prompt ({e}); set {ENV_KEY_PASSWORD}"))?;
                let again = rpassword::prompt_password("The same password again: ")
                    .map_err(|e| anyhow!("cannot prompt ({e}); set {ENV_KEY_PASSWORD}"))?;
                if first != again {
                    bail!("the two passwords differ; no key written");
                }
                if first.is_empty() {
                    bail!("empty password; use --unencrypted for a key without one");
                }
                first
            }
        };
        minisign::KeyPair::generate_encrypted_keypair(Some(password))
    }
    .map_err(|e| anyhow!("key generation failed: {e}"))?;
    let key_id = key_id_hex(pair.pk.keynum());
    let secret = pair
        .sk
        .to_box(Some(&format!(
            "mshot module repository secret key {key_id}"
        )))
        .map_err(|e| anyhow!("{e}"))?
        .into_string();
    let public = pair.pk.to_box().map_err(|e| anyhow!("{e}"))?.into_string();
    write_new(secret_path, secret.as_bytes(), 0o600)?;
    write_new(public_path, public.as_bytes(), 0o644)?;
    Ok(key_id)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// A secret key loaded for signing, with its public half.
pub struct SigningKey {
    secret: minisign::SecretKey,
    public: minisign::PublicKey,
    pub id: String,
}

impl SigningKey {
    /// Loads a minisign secret key file; an encrypted one is decrypted with
    /// `MSHOT_REPOSITORY_KEY_PASSWORD` or a prompted password.
    pub fn load(path: &Path) -> anyhow::Result<SigningKey> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read secret key {}", path.display()))?;
        let line = text
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
            .ok_or_else(|| anyhow!("{} holds no minisign secret key", path.display()))?;
        let raw = BASE64
            .decode(line)
            .map_err(|_| anyhow!("{} is not a minisign secret key", path.display()))?;
        let probe = minisign::SecretKey::from_bytes(&raw)
            .map_err(|e| anyhow!("{} is not a minisign secret key: {e}", path.display()))?;
        let sk_box = minisign::SecretKeyBox::from_string(&text)
            .map_err(|e| anyhow!("{} is not a minisign secret key: {e}", path.display()))?;
        let secret = if probe.is_encrypted() {
            let password = match std::env::var(ENV_KEY_PASSWORD) {
                Ok(p) => p,
                Err(_) => rpassword::prompt_password(format!("Password for {}: ", path.display()))
                    .map_err(|e| anyhow!("cannot prompt ({e}); set {ENV_KEY_PASSWORD}"))?,
            };
            minisign::SecretKey::from_box(sk_box, Some(password))
        } else {
            minisign::SecretKey::from_unencrypted_box(sk_box)
        }
        .map_err(|e| anyhow!("cannot open secret key {}: {e}", path.display()))?;
        let public = minisign::PublicKey::from_secret_key(&secret)
            .map_err(|e| anyhow!("secret key {}: {e}", path.display()))?;
        let id = key_id_hex(public.keynum());
        Ok(SigningKey { secret, public, id })
    }

    /// The public key line (`RW...`), as `--repository-key` takes it.
    pub fn public_base64(&self) -> String {
        self.public.to_base64()
    }

    /// A `.minisig` over `data`, with `trusted_comment` signed along.
    pub fn sign(&self, data: &[u8], trusted_comment: &str) -> anyhow::Result<String> {
        let signature = minisign::sign(
            Some(&self.public),
            &self.secret,
            std::io::Cursor::new(data),
            Some(trusted_comment),
            Some(&format!("signature from mshot repository key {}", self.id)),
        )
        .map_err(|e| anyhow!("signing failed: {e}"))?;
        Ok(signature.into_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A pair made by the minisign tool (`minisign -G -W`), and a signature
    // over b"mshot\n" made by `minisign -S`: the formats are the tool's own.
    const PUBLIC: &str = "untrusted comment: minisign public key 1F4DF8EA685C55FC\nRWT8VVxo6vhNH4e1Nt5nlyvFKc9WpVykTU7147q4Baug702mtu3JhJZ6\n";

    #[test]
    fn keys_parse_from_text_or_line() {
        let key = TrustedKey::parse(PUBLIC, "test").unwrap();
        assert_eq!(key.id, "1F4DF8EA685C55FC");
        let line = PUBLIC.lines().nth(1).unwrap();
        assert!(looks_like_key(line));
        assert_eq!(TrustedKey::from_arg(line).unwrap().id, key.id);
        for bad in [
            "",
            "untrusted comment: x\n",
            "RWnotbase64!!",
            "aGVsbG8=",
            // An RSA key is no minisign key.
            "ssh-rsa AAAAB3NzaC1yc2E",
        ] {
            assert!(TrustedKey::parse(bad, "bad").is_err(), "{bad:?} accepted");
        }
        let error = TrustedKey::from_arg("/nonexistent/key.pub").unwrap_err();
        assert!(error.to_string().contains("neither a minisign public key"));
    }

    #[test]
    fn builtin_key_parses() {
        let key = TrustedKey::builtin().unwrap();
        assert_eq!(key.id.len(), 16);
    }

    #[test]
    fn sign_and_verify_round_trip_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let (sk, pk) = (dir.path().join("k.key"), dir.path().join("k.pub"));
        let id = keygen(&sk, &pk, true).unwrap();
        assert!(keygen(&sk, &pk, true).is_err(), "overwrote a key");
        let signing = SigningKey::load(&sk).unwrap();
        assert_eq!(signing.id, id);
        let trusted = TrustedKey::from_arg(pk.to_str().unwrap()).unwrap();
        assert_eq!(trusted.id, id);
        let data = br#"{"format":"x"}"#;
        let sig = signing
            .sign(data, "timestamp:1\tfile:manifest.json")
            .unwrap();
        let signed = trusted.verify(data, &sig, "m").unwrap();
        assert_eq!(signed.trusted_comment, "timestamp:1\tfile:manifest.json");
        assert_eq!(signed.key_id, id);

        // One changed byte in the data.
        let error = trusted.verify(br#"{"format":"y"}"#, &sig, "m").unwrap_err();
        assert!(
            error.to_string().contains("signature check failed"),
            "{error}"
        );
        // A changed trusted comment breaks the global signature.
        let forged = sig.replace("timestamp:1", "timestamp:2");
        assert!(trusted.verify(data, &forged, "m").is_err());
        // Another key.
        let (sk2, pk2) = (dir.path().join("o.key"), dir.path().join("o.pub"));
        keygen(&sk2, &pk2, true).unwrap();
        let other = TrustedKey::from_arg(pk2.to_str().unwrap()).unwrap();
        let error = other.verify(data, &sig, "m").unwrap_err().to_string();
        assert!(error.contains(&format!("got one by key {id}")), "{error}");
        assert!(error.contains(&other.id), "{error}");
        // Garbage is no signature.
        assert!(trusted.verify(data, "hello\nworld\n", "m").is_err());
    }

    #[test]
    fn verifies_a_signature_made_by_the_minisign_tool() {
        // `minisign -S -s k.key -m m -t ...` over a file holding "mshot\n".
        let sig = "untrusted comment: signature from minisign secret key\nRUT8VVxo6vhNH1uBt/xV9jQ94bExC13yiMT8z7kl33e1eZA+2M+c+SV5Y8+sMeLhfHttWc3QNFIsqltyNlQ1FgcHgIK8wmO6EQc=\ntrusted comment: timestamp:1763770000\tfile:-\thashed\nMNVCJ2X8zYReJkq4bXnIDV1RF4z5bu5HlYuJ+xE/z8bPIQCRJ1y5SHX5lzEuLonjgoDsJ2cvM6bQrXXfKRAiDg==\n";
        let key = TrustedKey::parse(PUBLIC, "test").unwrap();
        key.verify(b"mshot\n", sig, "stdin").unwrap();
        assert!(key.verify(b"mshoT\n", sig, "stdin").is_err());
    }
}

//! Private key files: russh's loader, plus one repair for ECDSA keys.
//!
//! OpenSSH stores an ECDSA private scalar as an mpint, which drops leading
//! zero bytes. ssh-key 0.7.0-rc.11 (which russh 0.65 pins exactly) refuses
//! any scalar shorter than 32 bytes with "length invalid", so one NIST P-256
//! key in 512 that `ssh-keygen` makes (scalar below 2^247) cannot be loaded;
//! P-384 and P-521 keys would need a scalar below 2^256 and never hit it in
//! practice. Upstream master still has the 32-byte floor and no newer
//! release exists, so mshot re-encodes the scalar at the curve's full width
//! and hands the rewritten key back to ssh-key. The repair runs only after
//! russh failed with exactly that error; every other key takes russh's path
//! unchanged.

use base64::Engine;
use russh::keys::PrivateKey;
use russh::keys::ssh_key;
use zeroize::Zeroizing;

const BEGIN: &str = "-----BEGIN OPENSSH PRIVATE KEY-----";
const END: &str = "-----END OPENSSH PRIVATE KEY-----";
const MAGIC: &[u8] = b"openssh-key-v1\0";
/// The private section's padding unit when it is not encrypted.
const PLAIN_BLOCK: usize = 8;
/// The largest cipher block OpenSSH pads to (AES), so the most padding a
/// decrypted section can carry is one less.
const MAX_BLOCK: usize = 16;

/// Decodes a private key file (OpenSSH, PEM, PKCS#8, PuTTY) as
/// [`russh::keys::decode_secret_key`] does, and also reads OpenSSH ECDSA
/// keys whose private scalar has leading zero bytes.
pub fn decode_secret_key(
    text: &str,
    passphrase: Option<&str>,
) -> Result<PrivateKey, russh::keys::Error> {
    match russh::keys::decode_secret_key(text, passphrase) {
        Err(e) if is_length_error(&e) => match repair_short_ecdsa_scalar(text, passphrase) {
            Some(key) => {
                tracing::debug!("re-encoded a short ECDSA private scalar for ssh-key");
                Ok(key)
            }
            // Not the case we repair: keep russh's own error.
            None => Err(e),
        },
        other => other,
    }
}

/// Whether decoding failed only for want of a passphrase.
pub fn needs_passphrase(e: &russh::keys::Error) -> bool {
    matches!(e, russh::keys::Error::KeyIsEncrypted)
}

fn is_length_error(e: &russh::keys::Error) -> bool {
    matches!(
        e,
        russh::keys::Error::SshKey(ssh_key::Error::Encoding(ssh_key::encoding::Error::Length))
    )
}

/// Rebuilds an OpenSSH ECDSA key file with its scalar at full width and
/// decodes that. Encrypted keys are decrypted here (with ssh-key's own KDF
/// and cipher) and come back decrypted, as russh returns them. `None` when
/// the file is not an OpenSSH ECDSA key, the passphrase is missing or
/// wrong, or ssh-key still refuses it.
fn repair_short_ecdsa_scalar(text: &str, passphrase: Option<&str>) -> Option<PrivateKey> {
    let blob = Zeroizing::new(openssh_blob(text)?);
    let mut r = Reader(&blob);
    if r.take(MAGIC.len())? != MAGIC {
        return None;
    }
    let cipher = r.string()?;
    let _kdf = r.string()?;
    let _kdf_options = r.string()?;
    if r.u32()? != 1 {
        return None;
    }
    let public = r.string()?;
    let private = r.string()?;
    // AEAD ciphers (aes256-gcm@openssh.com) put their tag after the section.
    let tag = r.0;

    let plain = if cipher == b"none" {
        Zeroizing::new(private.to_vec())
    } else {
        // ssh-key parses an encrypted file's envelope without touching the
        // private section, which is what gives us its KDF and cipher here.
        let envelope = PrivateKey::from_bytes(&blob).ok()?;
        let (key, iv) = envelope
            .kdf()
            .derive_key_and_iv(envelope.cipher(), passphrase?)
            .ok()?;
        let tag = match tag {
            [] => None,
            t => Some(ssh_key::cipher::Tag::try_from(t).ok()?),
        };
        let mut buffer = Zeroizing::new(private.to_vec());
        envelope
            .cipher()
            .decrypt(&key, &iv, &mut buffer, tag)
            .ok()?;
        buffer
    };
    let section = widen_ecdsa_scalar(&plain)?;

    let mut out = Zeroizing::new(MAGIC.to_vec());
    put_string(&mut out, b"none");
    put_string(&mut out, b"none");
    put_string(&mut out, b"");
    out.extend_from_slice(&1u32.to_be_bytes());
    put_string(&mut out, public);
    put_string(&mut out, &section);
    PrivateKey::from_bytes(&out).ok()
}

/// The base64 body of an `OPENSSH PRIVATE KEY` PEM block, decoded.
fn openssh_blob(text: &str) -> Option<Vec<u8>> {
    let body = text.split_once(BEGIN)?.1.split_once(END)?.0;
    let body: Zeroizing<String> = Zeroizing::new(body.split_whitespace().collect());
    base64::engine::general_purpose::STANDARD
        .decode(body.as_bytes())
        .ok()
}

/// The width in bytes of a NIST curve's scalar, by the key's type name.
fn scalar_width(key_type: &[u8]) -> Option<usize> {
    match key_type {
        b"ecdsa-sha2-nistp256" => Some(32),
        b"ecdsa-sha2-nistp384" => Some(48),
        b"ecdsa-sha2-nistp521" => Some(66),
        _ => None,
    }
}

/// Takes a decrypted OpenSSH private section holding one ECDSA key
/// (`checkint checkint type curve Q d comment padding`) and returns it with
/// `d` written at the curve's full width: exactly `width` bytes, or a zero
/// byte plus `width` bytes when the top bit is set, the two forms ssh-key
/// accepts. The padding is recomputed for the new length. `None` when the
/// section is not a well-formed ECDSA section (other key types included) or
/// `d` is wider than its curve.
fn widen_ecdsa_scalar(section: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let mut r = Reader(section);
    let checkints = r.take(8)?;
    let key_type = r.string()?;
    let width = scalar_width(key_type)?;
    let curve = r.string()?;
    let point = r.string()?;
    let d = r.string()?;
    let comment = r.string()?;
    // What follows must be OpenSSH's padding (1, 2, 3, ...) and nothing else.
    let padding = r.0;
    if padding.len() >= MAX_BLOCK || padding.iter().zip(1u8..).any(|(&byte, want)| byte != want) {
        return None;
    }

    let digits = &d[d.iter().take_while(|&&b| b == 0).count()..];
    if digits.len() > width {
        return None;
    }
    let mut scalar = Zeroizing::new(vec![0u8; width + 1]);
    scalar[width + 1 - digits.len()..].copy_from_slice(digits);
    // Keep the leading zero only where the mpint sign rule needs it.
    let scalar = if scalar[1] & 0x80 != 0 {
        &scalar[..]
    } else {
        &scalar[1..]
    };

    let mut out = Zeroizing::new(Vec::with_capacity(section.len() + width));
    out.extend_from_slice(checkints);
    put_string(&mut out, key_type);
    put_string(&mut out, curve);
    put_string(&mut out, point);
    put_string(&mut out, scalar);
    put_string(&mut out, comment);
    for pad in 1u8.. {
        if out.len() % PLAIN_BLOCK == 0 {
            break;
        }
        out.push(pad);
    }
    Some(out)
}

fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Reads SSH wire fields off the front of a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    fn string(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A P-256 key from `ssh-keygen -t ecdsa` whose scalar is a 31-byte
    /// mpint (0x7c2f...): plain ssh-key rejects it.
    const SHORT: &str = include_str!("../../tests/fixtures/ssh-keys/ecdsa-p256-short-scalar");
    /// The same key, encrypted by `ssh-keygen -p` (aes256-ctr, bcrypt).
    const SHORT_ENCRYPTED: &str =
        include_str!("../../tests/fixtures/ssh-keys/ecdsa-p256-short-scalar-encrypted");
    const PASSPHRASE: &str = "mshot fixture";

    fn section(key_type: &[u8], d: &[u8], comment: &[u8]) -> Vec<u8> {
        let mut s = vec![1, 2, 3, 4, 1, 2, 3, 4];
        put_string(&mut s, key_type);
        put_string(&mut s, b"nistp256");
        put_string(&mut s, &[4; 65]);
        put_string(&mut s, d);
        put_string(&mut s, comment);
        for pad in 1u8.. {
            if s.len() % PLAIN_BLOCK == 0 {
                break;
            }
            s.push(pad);
        }
        s
    }

    fn scalar_of(section: &[u8]) -> Vec<u8> {
        let mut r = Reader(section);
        r.take(8).unwrap();
        for _ in 0..3 {
            r.string().unwrap();
        }
        r.string().unwrap().to_vec()
    }

    #[test]
    fn short_scalars_are_padded_to_the_curve_width() {
        for len in [1, 20, 30, 31] {
            let d: Vec<u8> = (0..len).map(|i| 0x11 + i as u8).collect();
            let fixed = widen_ecdsa_scalar(&section(b"ecdsa-sha2-nistp256", &d, b"c")).unwrap();
            let scalar = scalar_of(&fixed);
            assert_eq!(scalar.len(), 32, "{len}-byte scalar");
            assert!(scalar[..32 - len].iter().all(|&b| b == 0));
            assert_eq!(&scalar[32 - len..], &d[..]);
            assert_eq!(fixed.len() % PLAIN_BLOCK, 0);
        }
    }

    #[test]
    fn top_bit_keeps_its_sign_byte_and_full_width_is_unchanged() {
        let high: Vec<u8> = [0].into_iter().chain([0x9a; 32]).collect();
        let fixed = widen_ecdsa_scalar(&section(b"ecdsa-sha2-nistp256", &high, b"")).unwrap();
        assert_eq!(scalar_of(&fixed), high);
        let full = [0x42; 32];
        let original = section(b"ecdsa-sha2-nistp256", &full, b"comment");
        let fixed = widen_ecdsa_scalar(&original).unwrap();
        assert_eq!(&fixed[..], &original[..]);
    }

    #[test]
    fn other_keys_and_malformed_sections_are_left_alone() {
        let d = [0x11; 31];
        assert!(widen_ecdsa_scalar(&section(b"ssh-ed25519", &d, b"")).is_none());
        // Wider than the curve.
        assert!(widen_ecdsa_scalar(&section(b"ecdsa-sha2-nistp256", &[0x11; 33], b"")).is_none());
        // Truncated, or bad padding.
        let good = section(b"ecdsa-sha2-nistp256", &d, b"");
        assert!(widen_ecdsa_scalar(&good[..good.len() - 20]).is_none());
        let mut bad = good.clone();
        bad.extend_from_slice(&[9; 3]);
        assert!(widen_ecdsa_scalar(&bad).is_none());
    }

    #[test]
    fn the_fixture_key_is_one_plain_ssh_key_refuses() {
        let e = russh::keys::decode_secret_key(SHORT, None).unwrap_err();
        assert!(is_length_error(&e), "{e}");
        let e = russh::keys::decode_secret_key(SHORT_ENCRYPTED, Some(PASSPHRASE)).unwrap_err();
        assert!(is_length_error(&e), "{e}");
    }

    #[test]
    fn short_scalar_keys_load_and_sign_like_the_file_says() {
        let public = include_str!("../../tests/fixtures/ssh-keys/ecdsa-p256-short-scalar.pub");
        let public = ssh_key::PublicKey::from_openssh(public).unwrap();
        for key in [
            decode_secret_key(SHORT, None).unwrap(),
            decode_secret_key(SHORT_ENCRYPTED, Some(PASSPHRASE)).unwrap(),
        ] {
            assert_eq!(key.public_key().key_data(), public.key_data());
            let ecdsa = key.key_data().ecdsa().unwrap();
            assert_eq!(ecdsa.private_key_bytes().len(), 32);
            assert_eq!(
                ecdsa.private_key_bytes()[0],
                0,
                "the scalar's zero top byte"
            );
            // The scalar must be the one behind the public point: a wrong
            // re-encoding (shifted bytes) would produce signatures that fail.
            let sig =
                ssh_key::SshSig::sign(&key, "mshot-test", ssh_key::HashAlg::Sha256, b"m").unwrap();
            public
                .verify("mshot-test", b"m", &sig)
                .expect("signature from the repaired key verifies");
        }
    }

    #[test]
    fn encrypted_keys_still_need_the_right_passphrase() {
        assert!(matches!(
            decode_secret_key(SHORT_ENCRYPTED, None),
            Err(russh::keys::Error::KeyIsEncrypted)
        ));
        assert!(decode_secret_key(SHORT_ENCRYPTED, Some("wrong")).is_err());
    }
}

//! OpenSSH `known_hosts` matching.
//!
//! russh ships helpers for this file, but they only match exact or hashed
//! names. Real files also use `*`/`?` wildcards, `!` negation and the
//! `@revoked` marker, so we parse the format ourselves (sshd(8), "SSH_KNOWN_HOSTS
//! FILE FORMAT"). A host key is accepted only when a line names the host and
//! holds exactly that key; every other outcome is refused by the caller.

use std::io::Write;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use russh::keys::{HashAlg, PublicKey};
use sha1::Sha1;

/// The name a host is looked up under: `host` on port 22, `[host]:port` otherwise.
pub fn lookup_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// What the file says about a host key.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A line names this host with exactly this key.
    Known,
    /// No line names this host.
    Unknown,
    /// Lines name this host, but with other keys of the same algorithm.
    Changed {
        line: usize,
        known_fingerprint: String,
    },
    /// The key is marked `@revoked`.
    Revoked { line: usize },
}

#[derive(Debug)]
struct Entry {
    line: usize,
    marker: Marker,
    hosts: HostPatterns,
    key_type: String,
    key_blob: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq)]
enum Marker {
    None,
    Revoked,
    CertAuthority,
}

#[derive(Debug)]
enum HostPatterns {
    Hashed { salt: Vec<u8>, hash: Vec<u8> },
    List(Vec<String>),
}

impl HostPatterns {
    fn matches(&self, name: &str) -> bool {
        match self {
            HostPatterns::Hashed { salt, hash } => {
                let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(salt) else {
                    return false;
                };
                mac.update(name.as_bytes());
                mac.verify_slice(hash).is_ok()
            }
            HostPatterns::List(patterns) => {
                let mut matched = false;
                for pattern in patterns {
                    if let Some(negated) = pattern.strip_prefix('!') {
                        if wildcard_match(&negated.to_ascii_lowercase(), name) {
                            return false;
                        }
                    } else if wildcard_match(&pattern.to_ascii_lowercase(), name) {
                        matched = true;
                    }
                }
                matched
            }
        }
    }
}

/// OpenSSH's pattern language: `*` any run of characters, `?` exactly one.
fn wildcard_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

fn parse_line(line_no: usize, line: &str) -> Option<Entry> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let mut fields = line.split_whitespace();
    let mut first = fields.next()?;
    let marker = match first {
        "@revoked" => Marker::Revoked,
        "@cert-authority" => Marker::CertAuthority,
        _ => Marker::None,
    };
    if marker != Marker::None {
        first = fields.next()?;
    }
    let hosts = if let Some(rest) = first.strip_prefix("|1|") {
        let (salt, hash) = rest.split_once('|')?;
        HostPatterns::Hashed {
            salt: BASE64.decode(salt).ok()?,
            hash: BASE64.decode(hash).ok()?,
        }
    } else {
        HostPatterns::List(first.split(',').map(str::to_string).collect())
    };
    let key_type = fields.next()?.to_string();
    let key_blob = BASE64.decode(fields.next()?).ok()?;
    Some(Entry {
        line: line_no,
        marker,
        hosts,
        key_type,
        key_blob,
    })
}

fn key_blob(key: &PublicKey) -> Vec<u8> {
    key.to_bytes().unwrap_or_default()
}

/// Checks `key` for `host:port` against the text of a known_hosts file.
pub fn check(contents: &str, host: &str, port: u16, key: &PublicKey) -> Verdict {
    let name = lookup_name(&host.to_ascii_lowercase(), port);
    let blob = key_blob(key);
    let algorithm = key.algorithm().to_string();
    let mut verdict = Verdict::Unknown;
    for (index, line) in contents.lines().enumerate() {
        let Some(entry) = parse_line(index + 1, line) else {
            continue;
        };
        if !entry.hosts.matches(&name) {
            continue;
        }
        match entry.marker {
            Marker::Revoked if entry.key_blob == blob => {
                return Verdict::Revoked { line: entry.line };
            }
            Marker::Revoked | Marker::CertAuthority => {}
            Marker::None if entry.key_blob == blob => verdict = Verdict::Known,
            Marker::None if entry.key_type == algorithm && verdict == Verdict::Unknown => {
                verdict = Verdict::Changed {
                    line: entry.line,
                    known_fingerprint: fingerprint_of_blob(&entry.key_blob),
                };
            }
            Marker::None => {}
        }
    }
    verdict
}

/// The key algorithms the file lists for a host, in file order, so the client can
/// ask the server for a key it can verify (as OpenSSH orders HostKeyAlgorithms).
pub fn known_algorithms(contents: &str, host: &str, port: u16) -> Vec<String> {
    let name = lookup_name(&host.to_ascii_lowercase(), port);
    let mut algorithms = Vec::new();
    for (index, line) in contents.lines().enumerate() {
        if let Some(entry) = parse_line(index + 1, line)
            && entry.marker == Marker::None
            && entry.hosts.matches(&name)
            && !algorithms.contains(&entry.key_type)
        {
            algorithms.push(entry.key_type);
        }
    }
    algorithms
}

/// `SHA256:...` as OpenSSH prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

fn fingerprint_of_blob(blob: &[u8]) -> String {
    match PublicKey::from_bytes(blob) {
        Ok(key) => fingerprint(&key),
        Err(_) => "(unparsable key)".to_string(),
    }
}

/// Appends `host:port key` to the file, creating it (and its directory, mode 0700) if needed.
pub fn learn(path: &Path, host: &str, port: u16, key: &PublicKey) -> std::io::Result<()> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let openssh = key
        .to_openssh()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    // Drop the comment: it came from the server.
    let mut parts = openssh.split_whitespace();
    let (Some(kind), Some(data)) = (parts.next(), parts.next()) else {
        return Err(std::io::Error::other("cannot encode host key"));
    };
    let needs_newline = std::fs::read(path)
        .map(|c| !c.is_empty() && !c.ends_with(b"\n"))
        .unwrap_or(false);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    if needs_newline {
        writeln!(file)?;
    }
    writeln!(file, "{} {kind} {data}", lookup_name(host, port))?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHsqimlZgHf3UJ9mvnYSoGGspyStHlXkvUgKWQBTF23x";
    const KEY_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFhep2oThHAn8e/zcAZjK7hreDBQD7E5+ZNDa56JyzDZ";

    fn key(text: &str) -> PublicKey {
        PublicKey::from_openssh(text).unwrap()
    }

    fn hashed(name: &str, salt: &[u8]) -> String {
        let mut mac = Hmac::<Sha1>::new_from_slice(salt).unwrap();
        mac.update(name.as_bytes());
        let hash = mac.finalize().into_bytes();
        format!("|1|{}|{}", BASE64.encode(salt), BASE64.encode(hash))
    }

    #[test]
    fn exact_name_and_port() {
        let file = format!("[10.0.0.1]:2222 {KEY_A}\n");
        assert_eq!(check(&file, "10.0.0.1", 2222, &key(KEY_A)), Verdict::Known);
        assert_eq!(check(&file, "10.0.0.1", 22, &key(KEY_A)), Verdict::Unknown);
        assert_eq!(
            check(&file, "10.0.0.2", 2222, &key(KEY_A)),
            Verdict::Unknown
        );
    }

    #[test]
    fn changed_key_reports_line_and_old_fingerprint() {
        let file = format!("# comment\nhost.example {KEY_A}\n");
        match check(&file, "host.example", 22, &key(KEY_B)) {
            Verdict::Changed {
                line,
                known_fingerprint,
            } => {
                assert_eq!(line, 2);
                assert_eq!(known_fingerprint, fingerprint(&key(KEY_A)));
            }
            other => panic!("expected Changed, got {other:?}"),
        }
    }

    #[test]
    fn hashed_names() {
        let file = format!(
            "{} {KEY_A}\n",
            hashed("[db1]:2200", b"0123456789abcdefghij")
        );
        assert_eq!(check(&file, "db1", 2200, &key(KEY_A)), Verdict::Known);
        assert_eq!(check(&file, "db2", 2200, &key(KEY_A)), Verdict::Unknown);
    }

    #[test]
    fn wildcards_and_negation() {
        let file = format!("*.prod.example,!bastion.prod.example {KEY_A}\n");
        assert_eq!(
            check(&file, "web1.prod.example", 22, &key(KEY_A)),
            Verdict::Known
        );
        assert_eq!(
            check(&file, "Web1.PROD.example", 22, &key(KEY_A)),
            Verdict::Known
        );
        assert_eq!(
            check(&file, "bastion.prod.example", 22, &key(KEY_A)),
            Verdict::Unknown
        );
        assert!(wildcard_match("10.0.0.?", "10.0.0.7"));
        assert!(!wildcard_match("10.0.0.?", "10.0.0.17"));
        assert!(wildcard_match("*", ""));
    }

    #[test]
    fn revoked_wins_over_known() {
        let file = format!("h {KEY_A}\n@revoked h {KEY_A}\n");
        assert_eq!(
            check(&file, "h", 22, &key(KEY_A)),
            Verdict::Revoked { line: 2 }
        );
    }

    #[test]
    fn known_key_on_any_line_wins_over_other_keys() {
        let file = format!("h {KEY_B}\nh {KEY_A}\n");
        assert_eq!(check(&file, "h", 22, &key(KEY_A)), Verdict::Known);
    }

    #[test]
    fn garbage_lines_are_skipped() {
        let file = format!("not a key line\nh ssh-ed25519 !!!notbase64\nh {KEY_A}\n");
        assert_eq!(check(&file, "h", 22, &key(KEY_A)), Verdict::Known);
        assert_eq!(known_algorithms(&file, "h", 22), vec!["ssh-ed25519"]);
    }

    #[test]
    fn learn_then_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/known_hosts");
        learn(&path, "127.0.0.1", 2022, &key(KEY_A)).unwrap();
        let contents = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            check(&contents, "127.0.0.1", 2022, &key(KEY_A)),
            Verdict::Known
        );
        assert!(matches!(
            check(&contents, "127.0.0.1", 2022, &key(KEY_B)),
            Verdict::Changed { .. }
        ));
    }
}

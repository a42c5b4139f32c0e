//! What a test needs from the machine, and what happens when it is missing.
//!
//! On a developer's box without root or sshd, a test that needs them prints
//! `skipped: <test>: <why>` and passes. In CI (`tests/run` exports
//! `MSHOT_REQUIRE_ALL=1`) the same absence is a failure: `tests/run` installs
//! everything, so a skip there would hide a broken setup.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::process::find_program;
use super::user;

/// One prerequisite of a test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Effective uid 0: sshd must run as root to log in several users.
    Root,
    /// OpenSSH's server at `/usr/sbin/sshd`.
    Sshd,
    /// OpenSSH's client: `ssh` and `ssh-keygen`.
    SshClient,
    /// `ip` from iproute2, and the right to make network namespaces.
    Netns,
    /// The users made by `tests/setup-host.sh`.
    TestUsers,
    /// `python3`.
    Python3,
    /// `MSHOT_LAB_DIR` names an existing directory (the QEMU lab's build).
    LabDir,
    /// An arm64 lab build: `MSHOT_LAB_ARM64_DIR`, else `cloud-arm64` beside
    /// `MSHOT_LAB_DIR` (see [`arm64_lab_dir`]).
    LabArm64,
    /// Volatility 3's `vol` (see [`volatility`]), installed by `tests/run`.
    Volatility,
    /// The `minisign` tool (Debian package `minisign`).
    Minisign,
    /// The `openssl` command (test certificates).
    Openssl,
    /// The Garage S3 server (`tests/run` installs it into /opt/garage).
    Garage,
    /// moto's S3 server without the `crc32c` package (see [`super::moto`]).
    Moto,
    /// moto's S3 server with `s3crc32c`.
    MotoCrc32c,
}

impl Need {
    /// Why this need is not met, or `None` when it is.
    pub fn unmet(self) -> Option<String> {
        match self {
            Need::Root => (!is_root()).then(|| "not running as root".to_string()),
            Need::Sshd => (!Path::new("/usr/sbin/sshd").is_file())
                .then(|| "/usr/sbin/sshd is missing (apt-get install openssh-server)".to_string()),
            Need::SshClient => ["ssh", "ssh-keygen"]
                .into_iter()
                .find(|p| find_program(p).is_none())
                .map(|p| format!("{p} is not on PATH (apt-get install openssh-client)")),
            Need::Netns => netns_unmet(),
            Need::TestUsers => users_unmet(),
            Need::Python3 => find_program("python3")
                .is_none()
                .then(|| "python3 is not on PATH".to_string()),
            Need::Volatility => volatility().is_none().then(|| {
                "Volatility 3 not found: set MSHOT_VOL, or install it into $MSHOT_TOOLS_DIR/vol3 (tests/run does)".to_string()
            }),
            Need::Openssl => find_program("openssl")
                .is_none()
                .then(|| "openssl is not on PATH (apt-get install openssl)".to_string()),
            Need::Minisign => find_program("minisign")
                .is_none()
                .then(|| "minisign is not on PATH (apt-get install minisign)".to_string()),
            Need::LabDir => match std::env::var_os("MSHOT_LAB_DIR") {
                None => Some(
                    "MSHOT_LAB_DIR is not set (tests/run builds the lab and sets it)".to_string(),
                ),
                Some(dir) if !Path::new(&dir).is_dir() => Some(format!(
                    "MSHOT_LAB_DIR={} is not a directory",
                    Path::new(&dir).display()
                )),
                Some(_) => None,
            },
            Need::LabArm64 => arm64_lab_dir().err(),
            Need::Moto | Need::MotoCrc32c => {
                let (variant, extras) = match self {
                    Need::Moto => (super::moto::Variant::Plain, "server"),
                    _ => (super::moto::Variant::Crc32c, "server,s3crc32c"),
                };
                super::moto::binary(variant).is_none().then(|| {
                    format!("{variant:?} moto not found: install 'moto[{extras}]==5.2.6' into a venv under $MSHOT_TOOLS_DIR (tests/run does), or set MSHOT_MOTO / MSHOT_MOTO_CRC32C")
                })
            }
            Need::Garage => super::garage::binary().is_none().then(|| {
                "garage is not installed: cargo install garage@2.5.0 --no-default-features --features bundled-libs,sqlite --locked --root /opt/garage (tests/run does this), or set MSHOT_GARAGE".to_string()
            }),
        }
    }
}

/// Volatility 3's `vol`: `MSHOT_VOL`, else `$MSHOT_TOOLS_DIR/vol3/bin/vol`
/// (default tools dir `~/.cache/mshot-tools`, where `tests/run` installs it).
pub fn volatility() -> Option<std::path::PathBuf> {
    if let Some(v) = std::env::var_os("MSHOT_VOL") {
        return Some(std::path::PathBuf::from(v)).filter(|p| p.is_file());
    }
    let tools = std::env::var_os("MSHOT_TOOLS_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache/mshot-tools"))
        })?;
    Some(tools.join("vol3/bin/vol")).filter(|p| p.is_file())
}

/// The arm64 lab build (lab/build-guest.sh --flavour cloud-arm64):
/// `MSHOT_LAB_ARM64_DIR`, else `cloud-arm64` beside `MSHOT_LAB_DIR`, where
/// `tests/run` builds it.
pub fn arm64_lab_dir() -> Result<std::path::PathBuf, String> {
    arm64_build("MSHOT_LAB_ARM64_DIR", "cloud-arm64")
}

/// The arm64 lab build with 16 KiB pages (`--flavour arm64-16k`):
/// `MSHOT_LAB_ARM64_16K_DIR`, else `arm64-16k` beside `MSHOT_LAB_DIR`.
pub fn arm64_16k_lab_dir() -> Result<std::path::PathBuf, String> {
    arm64_build("MSHOT_LAB_ARM64_16K_DIR", "arm64-16k")
}

fn arm64_build(var: &str, flavour: &str) -> Result<std::path::PathBuf, String> {
    let dir = match std::env::var_os(var) {
        Some(d) => std::path::PathBuf::from(d),
        None => {
            let main = std::env::var_os("MSHOT_LAB_DIR").ok_or(format!(
                "neither {var} nor MSHOT_LAB_DIR is set (tests/run builds the lab and sets them)"
            ))?;
            Path::new(&main)
                .parent()
                .ok_or("MSHOT_LAB_DIR has no parent")?
                .join(flavour)
        }
    };
    let env = std::fs::read_to_string(dir.join("env")).unwrap_or_default();
    if !env.contains("LAB_ARCH=aarch64") || !dir.join("lime.ko").is_file() {
        return Err(format!(
            "{} is not a complete arm64 lab build (bash lab/build-guest.sh --flavour {flavour} {0})",
            dir.display()
        ));
    }
    Ok(dir)
}

/// Whether `MSHOT_REQUIRE_ALL=1`: a missing prerequisite fails the test.
pub fn require_all() -> bool {
    std::env::var("MSHOT_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

/// Checks `needs`. Returns `true` when all are met. Otherwise prints
/// `skipped: <test>: <reasons>` and returns `false`, or panics with the
/// reasons when [`require_all`] is set.
pub fn check(needs: &[Need]) -> bool {
    let reasons: Vec<String> = needs.iter().filter_map(|n| n.unmet()).collect();
    if reasons.is_empty() {
        return true;
    }
    let test = std::thread::current().name().unwrap_or("").to_string();
    let reasons = reasons.join("; ");
    if require_all() {
        panic!("MSHOT_REQUIRE_ALL=1 and a prerequisite is missing: {reasons}");
    }
    // Straight to stderr: libtest hides what `eprintln!` prints in passing
    // tests, and a skip must be seen.
    let _ = writeln!(std::io::stderr(), "skipped: {test}: {reasons}");
    false
}

/// What a skipped test returns; lets [`require!`](super::require) serve
/// tests returning `()` and `Result<(), E>` alike.
pub trait Skipped {
    fn skipped() -> Self;
}

impl Skipped for () {
    fn skipped() -> Self {}
}

impl<E> Skipped for Result<(), E> {
    fn skipped() -> Self {
        Ok(())
    }
}

/// Whether the effective uid is 0, read from `/proc/self/status`.
pub fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .is_some_and(|euid| euid == "0")
}

fn netns_unmet() -> Option<String> {
    static PROBE: OnceLock<Option<String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            if find_program("ip").is_none() {
                return Some("ip is not on PATH (apt-get install iproute2)".to_string());
            }
            if !is_root() {
                return Some("network namespaces need root".to_string());
            }
            // Try for real, in a thread of its own that ends right after.
            let ok = std::thread::spawn(|| {
                // SAFETY: unshare only moves this short-lived thread into a
                // new network namespace; it touches no memory of ours.
                unsafe { libc::unshare(libc::CLONE_NEWNET) == 0 }
            })
            .join()
            .unwrap_or(false);
            (!ok).then(|| "cannot create a network namespace (no CAP_SYS_ADMIN?)".to_string())
        })
        .clone()
}

fn users_unmet() -> Option<String> {
    let missing: Vec<&str> = user::ALL
        .into_iter()
        .filter(|u| {
            !Command::new("id")
                .arg("-u")
                .arg(u)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if !missing.is_empty() {
        return Some(format!(
            "test users missing ({}): run tests/setup-host.sh as root first",
            missing.join(", ")
        ));
    }
    if is_root() && !Path::new("/etc/sudoers.d/mshot-tests").is_file() {
        return Some(
            "/etc/sudoers.d/mshot-tests is missing: run tests/setup-host.sh as root first"
                .to_string(),
        );
    }
    None
}

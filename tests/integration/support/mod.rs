/*!
The shared harness for mshot's integration tests: real components, no fakes.

Tests start real OpenSSH `sshd` processes on loopback or inside network
namespaces of their own, with host keys and authorized keys in a temporary
directory, and talk to them with mshot or with the OpenSSH client. Everything
a test starts is stopped and removed when its handle is dropped, so tests run
in parallel and leave nothing behind.

The pieces:

- [`prereq`]: what the machine must have (root, sshd, `ip netns`, the test
  users made by `tests/setup-host.sh`), and the [`require!`] macro that makes
  a test print `skipped: …` when something is missing — or fail, when
  `MSHOT_REQUIRE_ALL=1` (CI, `tests/run`).
- [`keys`]: `ssh-keygen` wrappers for client and host keys.
- [`sshd`]: [`Sshd`], a running sshd, built with [`SshdBuilder`].
- [`netns`]: [`NetNs`] and [`NetChain`], network namespaces joined by veth
  pairs; the root namespace reaches only the first.
- [`topology`]: [`JumpChain`], sshds along a [`NetChain`] for jump-host tests.
- [`openssh`]: [`OpenSsh`], the OpenSSH client set up to trust only the
  sshds a test names.
- [`http`]: [`HttpServer`], Python's `http.server` on loopback serving a
  directory (module repositories), with its request log.
- [`datasource`]: [`DataSource`], a TCP listener that serves a deterministic
  byte pattern (or a file) for streaming tests and benchmarks.
- [`garage`]: [`Garage`], a real S3-compatible server (single-node Garage)
  on loopback with a bucket and key of its own.
- [`moto`]: [`Moto`], moto's S3 server on loopback, with and without correct
  CRC32C, for servers that report checksums wrongly.

A test reads like this:

```ignore
use crate::support::{self, KeyPair, KeyType, Need, OpenSsh, Sshd, user};

#[test]
fn key_login() -> anyhow::Result<()> {
    support::require!(Need::Root, Need::Sshd, Need::SshClient, Need::TestUsers);
    let sshd = Sshd::builder().start()?;
    let key = KeyPair::generate(sshd.dir(), "client", KeyType::Ed25519, None)?;
    sshd.authorize(user::NOPW, &key)?;
    let ssh = OpenSsh::new(Some(&key))?;
    ssh.trust(&sshd)?;
    let out = ssh.command(user::NOPW, &sshd).arg("true").output()?;
    assert!(out.status.success());
    Ok(())
}
```
*/

// The harness is an API used piecemeal: no single set of tests uses all of
// it, and its re-exports below are for convenience.
#![allow(dead_code, unused_imports)]

pub mod datasource;
pub mod faultproxy;
pub mod garage;
pub mod http;
pub mod keys;
pub mod moto;
pub mod netns;
pub mod openssh;
pub mod prereq;
pub mod process;
pub mod sshd;
pub mod topology;

pub use datasource::{DataSource, pattern};
pub use faultproxy::FaultProxy;
pub use garage::Garage;
pub use http::HttpServer;
pub use keys::{KeyPair, KeyType};
pub use moto::Moto;
pub use netns::{NetChain, NetNs};
pub use openssh::OpenSsh;
pub use prereq::Need;
pub use process::{KillOnDrop, SmallDisk};
pub use sshd::{Sshd, SshdBuilder};
pub use topology::JumpChain;

/// The users `tests/setup-host.sh` creates, and their passwords.
pub mod user {
    /// Key login only; `sudo` without a password (`NOPASSWD: ALL`).
    pub const NOPW: &str = "mshot-nopw";
    /// Password login; `sudo` asks for [`PW_PASSWORD`].
    pub const PW: &str = "mshot-pw";
    /// The password of [`PW`], for login and for `sudo`.
    pub const PW_PASSWORD: &str = "mshot-pw-secret";
    /// Password login; no `sudo` rights at all.
    pub const NOSUDO: &str = "mshot-nosudo";
    /// The password of [`NOSUDO`].
    pub const NOSUDO_PASSWORD: &str = "mshot-nosudo-secret";
    /// All of them, for checks that the machine was set up.
    pub const ALL: [&str; 3] = [NOPW, PW, NOSUDO];
}

/// Returns early from a test (printing `skipped: <test>: <why>`) unless every
/// [`Need`] is met; with `MSHOT_REQUIRE_ALL=1` it panics instead.
///
/// Works in tests returning `()` and in tests returning `Result<(), E>`.
macro_rules! require {
    ($($need:expr),+ $(,)?) => {
        if !$crate::support::prereq::check(&[$($need),+]) {
            return $crate::support::prereq::Skipped::skipped();
        }
    };
}
pub(crate) use require;

/// A free TCP port on `ip` in the calling thread's network namespace, found
/// by binding port 0 and letting it go. Another process may take it before
/// the caller binds it; [`Sshd`] retries when that happens.
pub fn free_port(ip: std::net::IpAddr) -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind((ip, 0))?;
    Ok(listener.local_addr()?.port())
}

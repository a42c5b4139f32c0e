/*!
Jump-host topologies: sshds along a [`NetChain`].

`JumpChain::start(label, n, …)` makes n+1 namespaces in a line and one sshd
in each: jump host i in namespace i, the target in the last one. Each sshd
listens on its namespace's upstream address, so

- the root namespace (the test, mshot, `ssh`) reaches only jump 0;
- jump i reaches only jump i+1 (or the target);
- nothing reaches the target but the last jump.

```text
          jumps = 1                          jumps = 2
root ─▶ ns0: jump 0 ─▶ ns1: target   root ─▶ ns0 ─▶ ns1 ─▶ ns2: target
```
*/

use std::fmt::Write as _;
use std::path::Path;

use super::keys::KeyPair;
use super::netns::NetChain;
use super::sshd::{Sshd, SshdBuilder};

/// Jump hosts and a target along a chain of namespaces.
///
/// Fields drop in order: the sshds stop before their namespaces go.
#[derive(Debug)]
pub struct JumpChain {
    /// Jump hosts, the one the root namespace reaches first.
    pub jumps: Vec<Sshd>,
    /// The host reachable only through all the jumps.
    pub target: Sshd,
    /// The namespaces; `net.ns(i)` holds `jumps[i]`, the last holds `target`.
    pub net: NetChain,
}

impl JumpChain {
    /// Starts `jumps` jump hosts and a target. `configure(i, builder)` may
    /// change each sshd's options; `i` is the jump's index, or `jumps` for
    /// the target. The builder already runs in namespace i and listens on
    /// its address.
    pub fn start(
        label: &str,
        jumps: usize,
        configure: impl Fn(usize, SshdBuilder) -> SshdBuilder,
    ) -> anyhow::Result<JumpChain> {
        let net = NetChain::create(label, jumps + 1)?;
        let mut sshds = Vec::with_capacity(jumps + 1);
        for (i, ns) in net.namespaces().iter().enumerate() {
            sshds.push(configure(i, Sshd::builder().netns(ns)).start()?);
        }
        let target = sshds.pop().expect("a chain has a target");
        Ok(JumpChain {
            jumps: sshds,
            target,
            net,
        })
    }

    /// Jumps then target.
    pub fn hosts(&self) -> impl Iterator<Item = &Sshd> {
        self.jumps.iter().chain(std::iter::once(&self.target))
    }

    /// Lets `key` log in as `user` on every host.
    pub fn authorize(&self, user: &str, key: &KeyPair) -> anyhow::Result<()> {
        self.hosts().try_for_each(|h| h.authorize(user, key))
    }

    /// Appends every host's known_hosts line to `path`.
    pub fn append_known_hosts(&self, path: &Path) -> anyhow::Result<()> {
        self.hosts().try_for_each(|h| h.append_known_hosts(path))
    }

    /// The jump list as `ssh -J` takes it: `user@10.77.S.2:P,user@10.77.S.6:P`.
    pub fn proxy_jump(&self, user: &str) -> String {
        let mut s = String::new();
        for (i, j) in self.jumps.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(s, "{sep}{user}@{}:{}", j.ip(), j.port());
        }
        s
    }
}

/*!
Network namespaces for tests: hosts that the root namespace can or cannot
reach, on one machine.

A [`NetChain`] of length N is N namespaces in a line, each joined to the one
before it (the first to the root namespace) by a veth pair:

```text
root ──veth── ns0 ──veth── ns1 ──veth── ns2 …
10.77.S.1   .2   .5    .6    .9   .10
```

Link k is the /30 `10.77.S.4k`; its upstream end is `.4k+1` and the end
inside namespace k is `.4k+2` ([`NetNs::addr`]). No namespace forwards and
none has a default route, so each reaches only its neighbours, and the root
namespace reaches only ns0. The root namespace also gets an `unreachable`
route for all of 10.77.0.0/16, so a test that dials ns1 from the root
namespace fails at once, and no packet for these addresses ever leaves the
machine.

S is a *slot*, 1–250, held with an exclusive `flock` on
`/run/mshot-tests/slot-S.lock` for as long as any namespace of the chain
lives: parallel tests (and parallel test processes) never share addresses
or interface names, and a slot left behind by a killed process is freed by
the kernel and cleaned up by its next user.
*/

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Once};

use anyhow::{Context, bail};

use super::process::{find_program, run};

/// The supernet all slots live in; unreachable from the root namespace
/// except through the veth links.
pub const SUPERNET: &str = "10.77.0.0/16";

const SLOT_DIR: &str = "/run/mshot-tests";
const MAX_LEN: usize = 16;

/// One network namespace, linked by a veth pair to the namespace before it
/// (or to the root namespace). Deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    index: usize,
    addr: Ipv4Addr,
    peer: Ipv4Addr,
    inner_if: String,
    slot: Arc<Slot>,
}

impl NetNs {
    /// A single namespace joined to the root namespace; `label` only helps
    /// tell namespaces apart in `ip netns list`.
    pub fn create(label: &str) -> anyhow::Result<NetNs> {
        let mut chain = NetChain::create(label, 1)?;
        Ok(chain
            .namespaces
            .pop()
            .expect("a chain of length 1 has one namespace"))
    }

    /// The namespace's name, for `ip netns exec`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its position in its chain (0 is joined to the root namespace).
    pub fn index(&self) -> usize {
        self.index
    }

    /// This namespace's address on the link towards the root namespace.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The address of the other end of that link: the root namespace's for
    /// index 0, else the previous namespace's.
    pub fn peer(&self) -> Ipv4Addr {
        self.peer
    }

    /// The slot number (the third octet of every address in the chain).
    pub fn slot(&self) -> u8 {
        self.slot.number
    }

    /// `ip netns exec <name> <program>`: a command that runs inside.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = ip();
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `f` on a thread of its own inside this namespace and returns
    /// what it returns. Sockets made there stay in this namespace when they
    /// are later used from other threads.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        run_in(&self.name, f)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting our end of the veth deletes its peer at once; deleting the
        // namespace alone would leave that to the kernel's cleanup worker.
        let _ = ip()
            .args(["-n", &self.name, "link", "del", &self.inner_if])
            .output();
        let _ = ip().args(["netns", "del", &self.name]).output();
    }
}

/// Namespaces in a line: root → ns0 → ns1 → …; see the module docs.
#[derive(Debug)]
pub struct NetChain {
    namespaces: Vec<NetNs>,
}

impl NetChain {
    /// Creates `len` namespaces (1 to 16) joined in a line.
    pub fn create(label: &str, len: usize) -> anyhow::Result<NetChain> {
        anyhow::ensure!(
            (1..=MAX_LEN).contains(&len),
            "a chain has 1 to {MAX_LEN} namespaces, not {len}"
        );
        static ROUTE: Once = Once::new();
        ROUTE.call_once(|| {
            let _ = ip()
                .args(["route", "replace", "unreachable", SUPERNET])
                .output();
        });
        let slot = Arc::new(Slot::claim()?);
        let s = slot.number;
        let label: String = label
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(16)
            .collect::<String>()
            .to_lowercase();
        let pid = std::process::id();
        let mut chain = NetChain {
            namespaces: Vec::with_capacity(len),
        };
        for k in 0..len {
            let name = format!("mshot-{label}-s{s}-n{k}-p{pid}");
            let outer_if = format!("msh{s}x{k}");
            let inner_if = format!("msh{s}y{k}");
            let base = 4 * k as u8;
            let peer = Ipv4Addr::new(10, 77, s, base + 1);
            let addr = Ipv4Addr::new(10, 77, s, base + 2);
            run(ip().args(["netns", "add", &name]))?;
            let ns = NetNs {
                name: name.clone(),
                index: k,
                addr,
                peer,
                inner_if: inner_if.clone(),
                slot: slot.clone(),
            };
            // Pushed at once, so an error below still deletes it.
            chain.namespaces.push(ns);
            // No forwarding, no IPv6 chatter, before any interface exists.
            run_in(&name, || {
                let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "0");
                let _ = std::fs::write("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1");
                let _ = std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
            })?;
            run(ip().args(["-n", &name, "link", "set", "lo", "up"]))?;
            let upstream: Vec<String> = match k {
                0 => vec![],
                _ => vec!["-n".into(), chain.namespaces[k - 1].name.clone()],
            };
            run(ip()
                .args(&upstream)
                .args(["link", "add", &outer_if, "type", "veth", "peer", "name"])
                .args([&inner_if, "netns", &name]))?;
            if k == 0 {
                let _ = std::fs::write(
                    format!("/proc/sys/net/ipv6/conf/{outer_if}/disable_ipv6"),
                    "1",
                );
            }
            run(ip().args(&upstream).args([
                "addr",
                "add",
                &format!("{peer}/30"),
                "dev",
                &outer_if,
            ]))?;
            run(ip().args(&upstream).args(["link", "set", &outer_if, "up"]))?;
            run(ip().args([
                "-n",
                &name,
                "addr",
                "add",
                &format!("{addr}/30"),
                "dev",
                &inner_if,
            ]))?;
            run(ip().args(["-n", &name, "link", "set", &inner_if, "up"]))?;
        }
        Ok(chain)
    }

    /// The number of namespaces.
    pub fn len(&self) -> usize {
        self.namespaces.len()
    }

    /// Namespace `i` (0 is the one joined to the root namespace).
    pub fn ns(&self, i: usize) -> &NetNs {
        &self.namespaces[i]
    }

    /// All namespaces, root side first.
    pub fn namespaces(&self) -> &[NetNs] {
        &self.namespaces
    }

    /// The last namespace: the one farthest from the root namespace.
    pub fn last(&self) -> &NetNs {
        self.namespaces.last().expect("a chain is never empty")
    }
}

impl Drop for NetChain {
    fn drop(&mut self) {
        // Far end first, so no namespace ever loses its upstream link while
        // one beyond it still exists.
        while let Some(ns) = self.namespaces.pop() {
            drop(ns);
        }
    }
}

/// Runs `f` on a new thread that has joined network namespace `name`.
pub fn run_in<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    let path = format!("/run/netns/{name}");
    let file = File::open(&path).with_context(|| format!("cannot open {path}"))?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: setns moves only this thread, which is ours alone and
                // ends when `f` returns, into the namespace `file` refers to.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    bail!("setns({name}): {}", std::io::Error::last_os_error());
                }
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// `ip`, wherever iproute2 put it.
pub fn ip() -> Command {
    Command::new(find_program("ip").unwrap_or_else(|| "ip".into()))
}

/// An exclusively locked slot number; see the module docs.
#[derive(Debug)]
struct Slot {
    number: u8,
    _lock: File,
}

impl Slot {
    fn claim() -> anyhow::Result<Slot> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        std::fs::create_dir_all(SLOT_DIR).with_context(|| format!("cannot create {SLOT_DIR}"))?;
        let start = std::process::id()
            .wrapping_mul(31)
            .wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed) * 7);
        for i in 0..250 {
            let number = ((start.wrapping_add(i)) % 250 + 1) as u8;
            let path = format!("{SLOT_DIR}/slot-{number}.lock");
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .with_context(|| format!("cannot open {path}"))?;
            if file.try_lock().is_ok() {
                cleanup_stale(number);
                return Ok(Slot {
                    number,
                    _lock: file,
                });
            }
        }
        bail!("all 250 network namespace slots are in use (see {SLOT_DIR})")
    }
}

/// Deletes what a killed process may have left in slot `number`.
fn cleanup_stale(number: u8) {
    let tag = format!("-s{number}-n");
    if let Ok(out) = ip().args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if name.starts_with("mshot-") && name.contains(&tag) {
                let _ = ip().args(["netns", "del", name]).output();
            }
        }
    }
    for side in ["x", "y"] {
        let _ = ip()
            .args(["link", "del", &format!("msh{number}{side}0")])
            .output();
    }
}

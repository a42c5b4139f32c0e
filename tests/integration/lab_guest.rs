//! The lab guest behind a jump host, for the end-to-end tests: a QEMU
//! guest (lab/build-guest.sh) inside a network namespace that only a real
//! sshd in the same namespace reaches, mshot's command lines for it, and
//! readers of what an image and the guest say about memory.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{KeyPair, KeyType, NetNs, Sshd, user};

pub(crate) struct Lab {
    pub(crate) dir: PathBuf,
}

impl Lab {
    pub(crate) fn key(&self) -> PathBuf {
        self.dir.join("id_ed25519")
    }
    pub(crate) fn module(&self) -> PathBuf {
        self.dir.join("lime.ko")
    }
    pub(crate) fn release(&self) -> String {
        std::fs::read_to_string(self.dir.join("release"))
            .unwrap()
            .trim()
            .to_string()
    }
    /// The guest's host key as a known_hosts line for 127.0.0.1:`port`.
    pub(crate) fn known_hosts_line(&self, port: u16) -> String {
        let public = std::fs::read_to_string(self.dir.join("host_key.pub")).unwrap();
        let mut fields = public.split_whitespace();
        format!(
            "[127.0.0.1]:{port} {} {}",
            fields.next().unwrap(),
            fields.next().unwrap()
        )
    }
}

/// A running guest; stopped on drop.
pub(crate) struct Guest {
    dir: PathBuf,
    pub(crate) port: u16,
}

/// How a guest boots, beyond its build.
#[derive(Default, Clone, Copy)]
pub(crate) struct Boot<'a> {
    /// Added to the kernel command line.
    pub(crate) append: &'a str,
    /// QEMU's `-cpu` (the build's default when `None`).
    pub(crate) cpu: Option<&'a str>,
    /// RAM in MiB (start-guest.sh's default when `None`).
    pub(crate) mem_mib: Option<u32>,
}

impl Guest {
    fn start(lab: &Lab, ns: &NetNs, port: u16, boot: Boot<'_>) -> anyhow::Result<Guest> {
        let mut cmd = Command::new(repo().join("lab/start-guest.sh"));
        cmd.arg(&lab.dir)
            .args(["--port", &port.to_string(), "--netns", ns.name()])
            .args(["--append", boot.append]);
        if let Some(cpu) = boot.cpu {
            cmd.args(["--cpu", cpu]);
        }
        if let Some(mem) = boot.mem_mib {
            cmd.args(["--mem", &mem.to_string()]);
        }
        let status = cmd.status()?;
        anyhow::ensure!(status.success(), "lab/start-guest.sh failed");
        Ok(Guest {
            dir: lab.dir.clone(),
            port,
        })
    }
}

impl Guest {
    /// Stops the guest now, as a crash or a cut link would.
    pub(crate) fn stop(&mut self) {
        let _ = Command::new(repo().join("lab/stop-guest.sh"))
            .arg(&self.dir)
            .arg(self.port.to_string())
            .status();
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("lab/stop-guest.sh"))
            .arg(&self.dir)
            .arg(self.port.to_string())
            .status();
    }
}

/// A guest of `lab` on 127.0.0.1:port in the root namespace (fleet tests
/// reach it straight), `mem_mib` MiB of RAM; stopped on drop.
pub(crate) struct LoopbackGuest {
    guest: Guest,
    key: PathBuf,
}

impl LoopbackGuest {
    pub(crate) fn start(lab: &Lab, port: u16, mem_mib: u32) -> anyhow::Result<LoopbackGuest> {
        let status = Command::new(repo().join("lab/start-guest.sh"))
            .arg(&lab.dir)
            .args(["--port", &port.to_string(), "--mem", &mem_mib.to_string()])
            .args(["--timeout", "180"])
            .status()?;
        anyhow::ensure!(status.success(), "lab/start-guest.sh failed on port {port}");
        Ok(LoopbackGuest {
            guest: Guest {
                dir: lab.dir.clone(),
                port,
            },
            key: lab.key(),
        })
    }

    pub(crate) fn port(&self) -> u16 {
        self.guest.port
    }

    /// A command on the guest with the OpenSSH client (not mshot).
    pub(crate) fn ssh(&self, known_hosts: &Path, command: &str) -> String {
        let out = Command::new("ssh")
            .arg("-i")
            .arg(&self.key)
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"])
            .args(["-p", &self.port().to_string(), "root@127.0.0.1", command])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// No lime module loaded and the manifest's temp dir gone.
    pub(crate) fn assert_clean(&self, known_hosts: &Path, manifest: &serde_json::Value) {
        let remote_dir = Path::new(manifest["module"]["remote_path"].as_str().unwrap())
            .parent()
            .unwrap()
            .display()
            .to_string();
        let after = self.ssh(
            known_hosts,
            &format!(
                "grep -c '^lime ' /proc/modules; test -e {remote_dir} && echo present || echo gone"
            ),
        );
        assert_eq!(
            after.split_whitespace().collect::<Vec<_>>(),
            ["0", "gone"],
            "port {}: {after}",
            self.port()
        );
    }
}

/// A guest in a namespace that only a jump host (a real sshd beside it) reaches.
/// Fields drop in order: guest, then sshd, then the namespace.
pub(crate) struct Setup {
    pub(crate) guest: Guest,
    pub(crate) jump: Sshd,
    pub(crate) jump_key: KeyPair,
    pub(crate) known_hosts: PathBuf,
    pub(crate) lab: Lab,
    _ns: NetNs,
}

impl Setup {
    pub(crate) fn start(port: u16) -> anyhow::Result<Setup> {
        Self::start_with(port, "")
    }

    /// A guest booted with `append` added to its kernel command line.
    pub(crate) fn start_with(port: u16, append: &str) -> anyhow::Result<Setup> {
        Self::start_in(Path::new(&std::env::var("MSHOT_LAB_DIR")?), port, append)
    }

    /// A guest of the lab build in `dir` (another kernel than MSHOT_LAB_DIR's).
    pub(crate) fn start_in(dir: &Path, port: u16, append: &str) -> anyhow::Result<Setup> {
        Self::boot(
            dir,
            port,
            Boot {
                append,
                ..Boot::default()
            },
        )
    }

    /// A guest of the lab build in `dir`, booted as `boot` says.
    pub(crate) fn boot(dir: &Path, port: u16, boot: Boot<'_>) -> anyhow::Result<Setup> {
        let lab = Lab {
            dir: std::fs::canonicalize(dir)?,
        };
        let ns = NetNs::create("lab")?;
        let jump = Sshd::builder().netns(&ns).start()?;
        let jump_key = KeyPair::generate(jump.dir(), "jump", KeyType::Ed25519, None)?;
        jump.authorize(user::NOPW, &jump_key)?;
        jump.authorize_line(
            user::NOPW,
            &std::fs::read_to_string(lab.dir.join("id_ed25519.pub"))?,
        )?;
        let known_hosts = jump.dir().join("known_hosts");
        jump.append_known_hosts(&known_hosts)?;
        std::fs::write(
            &known_hosts,
            format!(
                "{}{}\n",
                std::fs::read_to_string(&known_hosts)?,
                lab.known_hosts_line(port)
            ),
        )?;
        let guest = Guest::start(&lab, &ns, port, boot)?;
        Ok(Setup {
            guest,
            jump,
            jump_key,
            known_hosts,
            lab,
            _ns: ns,
        })
    }

    /// Runs a command on the guest with the OpenSSH client, through the jump host.
    pub(crate) fn ssh(&self, command: &str) -> String {
        guest_ssh(
            &self.lab,
            &self.jump,
            &self.known_hosts,
            self.guest.port,
            command,
        )
    }

    /// No lime module loaded and the module's temp dir (from the manifest) gone,
    /// checked with the OpenSSH client rather than trusting mshot's own report.
    pub(crate) fn assert_target_clean(&self, manifest: &serde_json::Value) {
        let remote_dir = Path::new(manifest["module"]["remote_path"].as_str().unwrap())
            .parent()
            .unwrap()
            .display()
            .to_string();
        let after = self.ssh(&format!(
            "grep -c '^lime ' /proc/modules; test -e {remote_dir} && echo present || echo gone"
        ));
        assert_eq!(
            after.split_whitespace().collect::<Vec<_>>(),
            ["0", "gone"],
            "{after}"
        );
    }

    /// mshot's command line for capturing the guest into `out_dir/guest.lime`.
    pub(crate) fn mshot(&self, out_dir: &Path) -> Command {
        let mut cmd = self.mshot_without_module(out_dir);
        cmd.arg("--module").arg(self.lab.module());
        cmd
    }

    /// mshot's command line without a LiME module.
    pub(crate) fn mshot_without_module(&self, out_dir: &Path) -> Command {
        let mut cmd = self.mshot_base();
        cmd.arg("--output-dir").arg(out_dir);
        cmd
    }

    /// mshot's command line with the module but no --output-dir (S3 only).
    pub(crate) fn mshot_no_output(&self) -> Command {
        let mut cmd = self.mshot_base();
        cmd.arg("--module").arg(self.lab.module());
        cmd
    }

    /// `mshot live` of the guest, its record going to `out_dir`.
    pub(crate) fn mshot_live(&self, out_dir: &Path) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mshot"));
        cmd.arg("live");
        self.connection_args(&mut cmd);
        cmd.arg("--output-dir").arg(out_dir);
        cmd
    }

    fn mshot_base(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mshot"));
        self.connection_args(&mut cmd);
        cmd.args(["--filename", "guest.lime"]);
        cmd
    }

    /// How mshot reaches the guest: through the jump host, keys checked.
    fn connection_args(&self, cmd: &mut Command) {
        cmd.args([
            "--server",
            "127.0.0.1",
            "--port",
            &self.guest.port.to_string(),
            "--user",
            "root",
        ])
        .arg("--key")
        .arg(self.lab.key())
        .arg("-J")
        .arg(format!(
            "{}@{}:{}",
            user::NOPW,
            self.jump.ip(),
            self.jump.port()
        ))
        .arg("--jump-key")
        .arg(&self.jump_key.private)
        .arg("--known-hosts")
        .arg(&self.known_hosts)
        .env_remove("SSH_AUTH_SOCK");
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a command on the guest with the OpenSSH client, through the jump host.
fn guest_ssh(lab: &Lab, jump: &Sshd, known_hosts: &Path, port: u16, command: &str) -> String {
    let proxy = format!(
        "ssh -i {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes -p {} -W %h:%p {}@{}",
        lab.key().display(),
        known_hosts.display(),
        jump.port(),
        user::NOPW,
        jump.ip()
    );
    let out = Command::new("ssh")
        .arg("-i")
        .arg(lab.key())
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"])
        .arg("-o")
        .arg(format!("ProxyCommand={proxy}"))
        .args(["-p", &port.to_string(), "root@127.0.0.1", command])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `mshot analyze IMAGE ARGS... --format json`: the document, one member
/// per plugin; a failed run panics with mshot's stderr.
pub(crate) fn analyze_json(image: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_mshot"))
        .arg("analyze")
        .arg(image)
        .args(args)
        .args(["--format", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Walks the LiME headers of an image; panics on anything malformed.
pub(crate) fn lime_ranges(image: &[u8]) -> Vec<(u64, u64)> {
    let mut ranges = Vec::new();
    let mut at = 0usize;
    while at < image.len() {
        let header = &image[at..at + 32];
        assert_eq!(
            &header[0..4],
            &0x4C69_4D45u32.to_le_bytes(),
            "magic at {at}"
        );
        assert_eq!(
            u32::from_le_bytes(header[4..8].try_into().unwrap()),
            1,
            "version at {at}"
        );
        let start = u64::from_le_bytes(header[8..16].try_into().unwrap());
        let end = u64::from_le_bytes(header[16..24].try_into().unwrap());
        assert!(end >= start);
        if let Some(&(_, previous_end)) = ranges.last() {
            assert!(start > previous_end, "ranges overlap or descend at {at}");
        }
        ranges.push((start, end));
        at += 32 + (end - start + 1) as usize;
    }
    assert_eq!(
        at,
        image.len(),
        "the last range runs past the end of the file"
    );
    ranges
}

pub(crate) fn system_ram(iomem: &str) -> Vec<(u64, u64)> {
    iomem
        .lines()
        .filter(|l| !l.starts_with(' ') && l.ends_with(": System RAM"))
        .map(|l| {
            let (start, end) = l.split(" : ").next().unwrap().split_once('-').unwrap();
            (
                u64::from_str_radix(start, 16).unwrap(),
                u64::from_str_radix(end, 16).unwrap(),
            )
        })
        .collect()
}

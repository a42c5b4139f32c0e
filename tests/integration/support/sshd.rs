/*!
Real OpenSSH servers for tests.

Each [`Sshd`] is `/usr/sbin/sshd -D -e` with a config, host key, authorized
keys, pid file and log of its own in a temporary directory, listening on one
address (127.0.0.1 by default, or a [`NetNs`]'s address inside that
namespace). [`SshdBuilder::start`] returns once the port answers with an
`SSH-2.0` banner; dropping the handle kills the server.

Authorized keys live in `<dir>/authorized_keys/<user>`
(`AuthorizedKeysFile <dir>/authorized_keys/%u`), so one server serves all the
test users; [`Sshd::authorize`] adds a key for one of them.
*/

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::keys::{KeyPair, KeyType};
use super::netns::{self, NetNs};

const SSHD: &str = "/usr/sbin/sshd";

/// Options for an [`Sshd`]; from [`Sshd::builder`].
#[derive(Clone, Debug)]
pub struct SshdBuilder {
    listen: IpAddr,
    port: Option<u16>,
    netns: Option<String>,
    host_key: KeyType,
    password_auth: bool,
    permit_root_login: String,
    allow_tcp_forwarding: bool,
    log_level: String,
    extra: Vec<String>,
    start_timeout: Duration,
}

impl SshdBuilder {
    /// The address to listen on (default 127.0.0.1).
    pub fn listen(mut self, ip: impl Into<IpAddr>) -> Self {
        self.listen = ip.into();
        self
    }

    /// A fixed port. Without it a free one is chosen, and another if sshd
    /// finds it taken.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Runs inside `ns` (with `ip netns exec`) and listens on its address.
    pub fn netns(mut self, ns: &NetNs) -> Self {
        self.netns = Some(ns.name().to_string());
        self.listen = IpAddr::V4(ns.addr());
        self
    }

    /// Runs inside the namespace called `name`; set the address with
    /// [`listen`](Self::listen).
    pub fn netns_name(mut self, name: impl Into<String>) -> Self {
        self.netns = Some(name.into());
        self
    }

    /// The host key's type (default Ed25519).
    pub fn host_key_type(mut self, kind: KeyType) -> Self {
        self.host_key = kind;
        self
    }

    /// `PasswordAuthentication` (default off; keys always work).
    pub fn password_auth(mut self, on: bool) -> Self {
        self.password_auth = on;
        self
    }

    /// `PermitRootLogin`: `yes`, `prohibit-password` (the default) or `no`.
    pub fn permit_root_login(mut self, value: &str) -> Self {
        self.permit_root_login = value.to_string();
        self
    }

    /// `AllowTcpForwarding` (default on: jump hosts need it).
    pub fn allow_tcp_forwarding(mut self, on: bool) -> Self {
        self.allow_tcp_forwarding = on;
        self
    }

    /// `LogLevel` (default VERBOSE).
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.to_string();
        self
    }

    /// One more sshd_config line, e.g. `"MaxSessions 2"`.
    pub fn config_line(mut self, line: impl Into<String>) -> Self {
        self.extra.push(line.into());
        self
    }

    /// How long [`start`](Self::start) waits for the banner (default 10 s).
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Generates the host key, writes the config, starts sshd and waits for
    /// its banner.
    pub fn start(self) -> anyhow::Result<Sshd> {
        let dir = tempfile::Builder::new()
            .prefix("mshot-sshd-")
            .tempdir()
            .context("cannot make sshd's temp dir")?;
        // sshd reads authorized keys as the logging-in user.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let authorized = dir.path().join("authorized_keys");
        std::fs::create_dir(&authorized)?;
        std::fs::set_permissions(&authorized, std::fs::Permissions::from_mode(0o755))?;
        std::fs::create_dir_all("/run/sshd").context("cannot create /run/sshd")?;
        let host_key = KeyPair::generate(dir.path(), "host_key_0", self.host_key, None)?;
        let mut sshd = Sshd {
            child: None,
            port: self.port.unwrap_or(0),
            host_key,
            key_generation: 0,
            options: self,
            dir,
        };
        sshd.spawn()?;
        Ok(sshd)
    }
}

/// A running sshd; killed when dropped.
#[derive(Debug)]
pub struct Sshd {
    child: Option<Child>,
    port: u16,
    host_key: KeyPair,
    key_generation: u32,
    options: SshdBuilder,
    dir: tempfile::TempDir,
}

impl Sshd {
    /// The defaults: 127.0.0.1, a free port, an Ed25519 host key, keys
    /// only, `PermitRootLogin prohibit-password`, TCP forwarding allowed.
    pub fn builder() -> SshdBuilder {
        SshdBuilder {
            listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: None,
            netns: None,
            host_key: KeyType::Ed25519,
            password_auth: false,
            permit_root_login: "prohibit-password".to_string(),
            allow_tcp_forwarding: true,
            log_level: "VERBOSE".to_string(),
            extra: Vec::new(),
            start_timeout: Duration::from_secs(10),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.options.listen, self.port)
    }

    pub fn ip(&self) -> IpAddr {
        self.options.listen
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The network namespace it runs in, if any.
    pub fn netns(&self) -> Option<&str> {
        self.options.netns.as_deref()
    }

    /// Its temporary directory: config, keys, log. Tests may put files here.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The current host key pair.
    pub fn host_key(&self) -> &KeyPair {
        &self.host_key
    }

    /// `<algorithm> <base64>` of the current host key.
    pub fn host_public_key(&self) -> &str {
        &self.host_key.public_key
    }

    /// The host as known_hosts names it: `[ip]:port`, or the bare address
    /// for port 22.
    pub fn known_hosts_host(&self) -> String {
        match (self.port, self.ip()) {
            (22, ip) => ip.to_string(),
            (port, ip) => format!("[{ip}]:{port}"),
        }
    }

    /// One known_hosts line for this server's current host key, e.g.
    /// `[127.0.0.1]:40022 ssh-ed25519 AAAA…`.
    pub fn known_hosts_line(&self) -> String {
        format!("{} {}", self.known_hosts_host(), self.host_public_key())
    }

    /// Appends [`known_hosts_line`](Self::known_hosts_line) to `path`.
    pub fn append_known_hosts(&self, path: &Path) -> anyhow::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        writeln!(file, "{}", self.known_hosts_line())?;
        Ok(())
    }

    /// Lets `key` log in as `user`.
    pub fn authorize(&self, user: &str, key: &KeyPair) -> anyhow::Result<()> {
        self.authorize_line(user, &key.public_key)
    }

    /// Adds one raw authorized_keys line (options allowed) for `user`.
    pub fn authorize_line(&self, user: &str, line: &str) -> anyhow::Result<()> {
        let path = self.dir().join("authorized_keys").join(user);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        writeln!(file, "{line}")?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        Ok(())
    }

    /// Where sshd logs (`-E`).
    pub fn log_path(&self) -> PathBuf {
        self.dir().join("sshd.log")
    }

    /// Everything sshd logged so far, including what it printed before
    /// opening its log.
    pub fn log(&self) -> String {
        let mut log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let early = std::fs::read_to_string(self.dir().join("sshd.stderr")).unwrap_or_default();
        if !early.trim().is_empty() {
            let _ = write!(log, "\n--- sshd stdout/stderr ---\n{early}");
        }
        log
    }

    /// Replaces the host key with a new one of type `kind` and restarts on
    /// the same address and port: to clients, a changed host key.
    pub fn rotate_host_key(&mut self, kind: KeyType) -> anyhow::Result<()> {
        self.stop();
        self.key_generation += 1;
        self.host_key = KeyPair::generate(
            self.dir.path(),
            &format!("host_key_{}", self.key_generation),
            kind,
            None,
        )?;
        self.options.port = Some(self.port);
        self.spawn()
    }

    /// Kills the server (it is also killed on drop). Sessions already open
    /// go on in their own processes until their clients leave.
    /// Kills every connection this sshd serves (all its descendants: the
    /// privileged monitor and the user's own process that carries the
    /// traffic), as a network drop would, while it keeps accepting new ones.
    pub fn drop_connections(&self) -> anyhow::Result<()> {
        let pid = self
            .child
            .as_ref()
            .map(|c| c.id())
            .ok_or_else(|| anyhow::anyhow!("sshd is not running"))?;
        let mut parents = Vec::new();
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // The parent pid is the second field after the parenthesised name.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parents.push((child, ppid));
            }
        }
        let mut doomed = vec![pid];
        let mut i = 0;
        while i < doomed.len() {
            let parent = doomed[i];
            doomed.extend(
                parents
                    .iter()
                    .filter(|(_, p)| *p == parent)
                    .map(|(c, _)| *c),
            );
            i += 1;
        }
        anyhow::ensure!(doomed.len() > 1, "sshd {pid} serves no connection");
        for victim in &doomed[1..] {
            // SAFETY: kill(2) on processes of our own sshd.
            unsafe { libc::kill(*victim as i32, libc::SIGKILL) };
        }
        Ok(())
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the listening process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn config(&self) -> String {
        let o = &self.options;
        let dir = self.dir().display().to_string();
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        let mut c = String::new();
        let _ = writeln!(c, "# Written by mshot's test harness.");
        let _ = writeln!(c, "ListenAddress {}", SocketAddr::new(o.listen, self.port));
        let _ = writeln!(c, "HostKey {}", self.host_key.private.display());
        let _ = writeln!(c, "PidFile {dir}/sshd.pid");
        let _ = writeln!(c, "AuthorizedKeysFile {dir}/authorized_keys/%u");
        let _ = writeln!(c, "StrictModes no");
        let _ = writeln!(c, "UsePAM no");
        let _ = writeln!(c, "PubkeyAuthentication yes");
        let _ = writeln!(c, "PasswordAuthentication {}", yes_no(o.password_auth));
        let _ = writeln!(c, "KbdInteractiveAuthentication no");
        let _ = writeln!(c, "PermitRootLogin {}", o.permit_root_login);
        let _ = writeln!(c, "AllowTcpForwarding {}", yes_no(o.allow_tcp_forwarding));
        let _ = writeln!(c, "LogLevel {}", o.log_level);
        let _ = writeln!(c, "PrintMotd no");
        let _ = writeln!(c, "PrintLastLog no");
        let _ = writeln!(c, "UseDNS no");
        let _ = writeln!(c, "MaxStartups 64:30:128");
        let _ = writeln!(c, "Subsystem sftp internal-sftp");
        if sshd_version() >= (9, 8) {
            // Tests fail logins on purpose; later logins must not be penalised.
            let _ = writeln!(c, "PerSourcePenalties no");
        }
        for line in &o.extra {
            let _ = writeln!(c, "{line}");
        }
        c
    }

    /// Starts sshd and waits for its banner, choosing a new port while the
    /// chosen one turns out to be taken (unless the port was fixed).
    fn spawn(&mut self) -> anyhow::Result<()> {
        let fixed = self.options.port.is_some();
        for _attempt in 0..10 {
            if !fixed {
                let ip = self.options.listen;
                self.port = match &self.options.netns {
                    Some(ns) => netns::run_in(ns, || super::free_port(ip))??,
                    None => super::free_port(ip)?,
                };
            }
            match self.spawn_once()? {
                Started::Ready => return Ok(()),
                Started::PortTaken if !fixed => continue,
                Started::PortTaken => bail!("sshd: port {} is taken\n{}", self.port, self.log()),
            }
        }
        bail!("sshd: found no free port in 10 tries\n{}", self.log())
    }

    fn spawn_once(&mut self) -> anyhow::Result<Started> {
        let config = self.dir().join("sshd_config");
        std::fs::write(&config, self.config())?;
        let _ = std::fs::remove_file(self.log_path());
        let early = std::fs::File::create(self.dir().join("sshd.stderr"))?;
        let mut cmd = match &self.options.netns {
            Some(ns) => {
                let mut cmd = netns::ip();
                cmd.args(["netns", "exec", ns, SSHD]);
                cmd
            }
            None => Command::new(SSHD),
        };
        cmd.arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&config)
            .arg("-E")
            .arg(self.log_path());
        cmd.stdin(Stdio::null())
            .stdout(early.try_clone()?)
            .stderr(early);
        self.child = Some(
            cmd.spawn()
                .with_context(|| format!("cannot start {cmd:?}"))?,
        );

        let deadline = Instant::now() + self.options.start_timeout;
        loop {
            let child = self.child.as_mut().expect("just started");
            if let Some(status) = child.try_wait()? {
                self.child = None;
                let log = self.log();
                if log.contains("Address already in use") {
                    return Ok(Started::PortTaken);
                }
                bail!(
                    "sshd exited ({status}) before it answered on {}:\n{log}",
                    self.addr()
                );
            }
            let addr = self.addr();
            let banner = match &self.options.netns {
                Some(ns) => netns::run_in(ns, || probe_banner(addr))?,
                None => probe_banner(addr),
            };
            if banner.as_deref().is_some_and(|b| b.starts_with("SSH-2.0")) {
                return Ok(Started::Ready);
            }
            if Instant::now() >= deadline {
                self.stop();
                bail!(
                    "sshd gave no SSH-2.0 banner on {addr} within {:?} (last probe: {banner:?}):\n{}",
                    self.options.start_timeout,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

enum Started {
    Ready,
    PortTaken,
}

/// Connects, reads the server's identification line, and says goodbye with
/// an identification of our own, so the log shows who knocked.
fn probe_banner(addr: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 255 && !line.ends_with(b"\n") {
        match stream.read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            _ => break,
        }
    }
    let _ = stream.write_all(b"SSH-2.0-mshot_harness_probe\r\n");
    Some(String::from_utf8_lossy(&line).trim_end().to_string())
}

/// The installed sshd's (major, minor) version, from `sshd -V`.
pub fn sshd_version() -> (u32, u32) {
    static VERSION: OnceLock<(u32, u32)> = OnceLock::new();
    *VERSION.get_or_init(|| {
        let out = Command::new(SSHD).arg("-V").output().ok();
        let text = out.map(|o| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        });
        parse_openssh_version(text.as_deref().unwrap_or("")).unwrap_or((0, 0))
    })
}

fn parse_openssh_version(text: &str) -> Option<(u32, u32)> {
    let rest = &text[text.find("OpenSSH_")? + "OpenSSH_".len()..];
    let mut parts = rest.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[test]
fn parses_openssh_versions() {
    assert_eq!(
        parse_openssh_version("OpenSSH_9.2p1 Debian-2+deb12u3, OpenSSL 3.0.11"),
        Some((9, 2))
    );
    assert_eq!(
        parse_openssh_version("unknown option -- V\nOpenSSH_10.0, OpenSSL"),
        Some((10, 0))
    );
    assert_eq!(parse_openssh_version("nothing"), None);
}

//! Target operations as pure functions: the shell commands mshot sends and the
//! parsers for what comes back. Nothing here does I/O, so every command and
//! parser is unit-tested; `orchestrate` runs them over a `transport::Session`.
//!
//! Commands use only POSIX sh and tools that busybox also has (cat, uname, id,
//! mktemp, sha256sum, insmod, rmmod, rm), so a minimal target works too.

pub mod live;
pub mod material;
mod root;
pub mod shell;

pub use root::{SudoPolicy, become_root};

use std::collections::BTreeSet;

/// Quotes one argument for a POSIX shell.
pub fn quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        return arg.to_string();
    }
    format!("'{}'", arg.replace('\'', r"'\''"))
}

/// `--sudo` / a fleet host's `sudo:`: whether sudo may, must or must not be used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SudoMode {
    /// A root login runs commands directly; otherwise `sudo -n`, then sudo
    /// with the password.
    #[default]
    Auto,
    /// Never run sudo: the login must be root, else the capture is refused
    /// before anything is pushed.
    Never,
    /// Every root command goes through sudo, even for a root login, so the
    /// target's sudo log records each one.
    Always,
}

impl SudoMode {
    /// The fleet file's spelling: `auto`, `never`, `always`, or true/false.
    pub fn parse(text: &str) -> Option<SudoMode> {
        match text {
            "auto" => Some(SudoMode::Auto),
            "never" | "false" => Some(SudoMode::Never),
            "always" | "true" => Some(SudoMode::Always),
            _ => None,
        }
    }
}

pub use crate::record::{PhysRange, Privilege};

impl Privilege {
    /// The command line that runs `command` as root.
    pub fn wrap(self, command: &str) -> String {
        match self {
            Privilege::Root => command.to_string(),
            Privilege::SudoNoPassword => format!("sudo -n -- sh -c {}", quote(command)),
            // -k ignores cached credentials, so sudo always reads the password line
            // first and never passes it on to the command as input.
            Privilege::SudoPassword => format!("sudo -k -S -p '' -- sh -c {}", quote(command)),
        }
    }
}

/// Commands, built in one place so the audit log shows exactly these strings.
pub mod commands {
    use super::quote;

    pub const KERNEL: &str = "uname -r; uname -m; id -u";
    pub const SUDO_NO_PASSWORD: &str = "sudo -n true";
    pub const SUDO_WITH_PASSWORD: &str = "sudo -k -S -p '' true";
    pub const MODULES: &str = "cat /proc/modules";
    pub const IOMEM: &str = "cat /proc/iomem";
    pub const TCP_SOCKETS: &str = "cat /proc/net/tcp; cat /proc/net/tcp6 2>/dev/null; true";
    pub const MAKE_TEMP_DIR: &str = "umask 077 && mktemp -d /tmp/mshot.XXXXXX";
    pub const RMMOD_LIME: &str = "rmmod lime";

    pub fn write_file(path: &str) -> String {
        format!("umask 077 && cat > {}", quote(path))
    }

    pub fn sha256(path: &str) -> String {
        format!("sha256sum {}", quote(path))
    }

    pub fn insmod(path: &str, lime_args: &str) -> String {
        format!("insmod {} {}", quote(path), quote(lime_args))
    }

    pub fn remove_dir(path: &str) -> String {
        format!("rm -rf -- {}", quote(path))
    }
}

/// The arguments mshot gives LiME: TCP on loopback only, LiME format, and no
/// timeout, so a slow tunnel can never make LiME zero-fill a range.
pub fn lime_arguments(port: u16) -> String {
    format!("path=tcp:{port} format=lime localhostonly=1 timeout=0")
}

/// What `uname -r; uname -m; id -u` said.
#[derive(Debug, PartialEq, Eq)]
pub struct KernelInfo {
    pub release: String,
    pub machine: String,
    pub uid: u32,
}

pub fn parse_kernel_info(stdout: &str) -> Option<KernelInfo> {
    let mut lines = stdout.lines().map(str::trim);
    let release = lines.next()?.to_string();
    let machine = lines.next()?.to_string();
    let uid = lines.next()?.parse().ok()?;
    let printable = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
    (printable(&release) && printable(&machine)).then_some(KernelInfo {
        release,
        machine,
        uid,
    })
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IomemError {
    #[error("/proc/iomem shows all addresses as zero: it was not read as root")]
    NotRoot,
    #[error("/proc/iomem lists no System RAM")]
    NoSystemRam,
    #[error("/proc/iomem line {line} is malformed: {text}")]
    Malformed { line: usize, text: String },
}

/// The `System RAM` ranges of /proc/iomem that are not nested inside another
/// `System RAM` range, in address order.
pub fn parse_iomem_system_ram(text: &str) -> Result<Vec<PhysRange>, IomemError> {
    let mut ranges = Vec::new();
    // Indentation depth of the innermost System RAM we are inside, if any.
    let mut ram_depth: Option<usize> = None;
    let mut any_nonzero = false;
    for (index, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let depth = raw.len() - raw.trim_start().len();
        let malformed = || IomemError::Malformed {
            line: index + 1,
            text: crate::util::sanitize::one_line(raw),
        };
        let (span, name) = raw.trim().split_once(" : ").ok_or_else(malformed)?;
        let (start, end) = span.split_once('-').ok_or_else(malformed)?;
        let start = u64::from_str_radix(start, 16).map_err(|_| malformed())?;
        let end = u64::from_str_radix(end, 16).map_err(|_| malformed())?;
        if start != 0 || end != 0 {
            any_nonzero = true;
        }
        if let Some(d) = ram_depth
            && depth <= d
        {
            ram_depth = None;
        }
        if name == "System RAM" && ram_depth.is_none() {
            if end < start {
                return Err(malformed());
            }
            ranges.push(PhysRange { start, end });
            ram_depth = Some(depth);
        }
    }
    if !any_nonzero {
        return Err(IomemError::NotRoot);
    }
    if ranges.is_empty() {
        return Err(IomemError::NoSystemRam);
    }
    ranges.sort();
    Ok(ranges)
}

/// Bytes of a LiME image of these ranges: each range plus its 32-byte header.
pub fn lime_image_size(ranges: &[PhysRange]) -> u64 {
    ranges.iter().map(|r| r.bytes() + 32).sum()
}

/// A TCP socket from /proc/net/tcp or tcp6.
#[derive(Debug, PartialEq, Eq)]
pub struct TcpSocket {
    /// Local address as the kernel prints it (hex, network order per 32-bit word).
    pub local_address: String,
    pub local_port: u16,
    pub state: u8,
}

pub const TCP_LISTEN: u8 = 0x0A;
const LOOPBACK_V4: &str = "0100007F";

pub fn parse_proc_net_tcp(text: &str) -> Vec<TcpSocket> {
    let mut sockets = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(slot), Some(local), Some(_remote), Some(state)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if !slot.ends_with(':') {
            continue;
        }
        let Some((address, port)) = local.split_once(':') else {
            continue;
        };
        let (Ok(port), Ok(state)) = (u16::from_str_radix(port, 16), u8::from_str_radix(state, 16))
        else {
            continue;
        };
        sockets.push(TcpSocket {
            local_address: address.to_ascii_uppercase(),
            local_port: port,
            state,
        });
    }
    sockets
}

/// Local ports in use by any TCP socket, in any state.
pub fn used_ports(sockets: &[TcpSocket]) -> BTreeSet<u16> {
    sockets.iter().map(|s| s.local_port).collect()
}

/// A port below the usual ephemeral range (32768+) that no socket uses.
pub fn choose_free_port(used: &BTreeSet<u16>, mut random: impl FnMut() -> u16) -> Option<u16> {
    const LOW: u16 = 20000;
    const HIGH: u16 = 32767;
    for _ in 0..200 {
        let port = LOW + random() % (HIGH - LOW);
        if !used.contains(&port) {
            return Some(port);
        }
    }
    (LOW..HIGH).find(|p| !used.contains(p))
}

/// Who listens on `port`.
#[derive(Debug, PartialEq, Eq)]
pub enum ListenState {
    Nobody,
    LoopbackOnly,
    /// Listening on an address beyond loopback: LiME must not be reachable from the network.
    Exposed(String),
}

pub fn listen_state(sockets: &[TcpSocket], port: u16) -> ListenState {
    let mut state = ListenState::Nobody;
    for socket in sockets
        .iter()
        .filter(|s| s.local_port == port && s.state == TCP_LISTEN)
    {
        if socket.local_address == LOOPBACK_V4 {
            state = ListenState::LoopbackOnly;
        } else {
            return ListenState::Exposed(socket.local_address.clone());
        }
    }
    state
}

/// Whether /proc/modules lists `name` (any state: Live, Loading, Unloading).
pub fn module_loaded(proc_modules: &str, name: &str) -> bool {
    proc_modules
        .lines()
        .any(|line| line.split_whitespace().next() == Some(name))
}

/// True while the module's init is still running (`/proc/modules` state
/// `Loading`): LiME sits there until its client has come and gone.
pub fn module_initialising(proc_modules: &str, name: &str) -> bool {
    proc_modules.lines().any(|line| {
        let mut fields = line.split_whitespace();
        fields.next() == Some(name) && fields.nth(3) == Some("Loading")
    })
}

/// The hash from `sha256sum FILE` output.
pub fn parse_sha256sum(stdout: &str) -> Option<String> {
    let hash = stdout.split_whitespace().next()?;
    (hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| hash.to_ascii_lowercase())
}

/// The directory `mktemp -d` printed, if it is one mshot would dare to `rm -rf`.
pub fn parse_temp_dir(stdout: &str) -> Option<String> {
    let path = stdout.trim();
    let name = path.strip_prefix("/tmp/mshot.")?;
    (name.len() >= 6 && name.bytes().all(|b| b.is_ascii_alphanumeric())).then(|| path.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_hostile_input() {
        assert_eq!(quote("/tmp/mshot.abc/lime.ko"), "/tmp/mshot.abc/lime.ko");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("x'; rm -rf / #"), r"'x'\''; rm -rf / #'");
        assert_eq!(quote("$(reboot)"), "'$(reboot)'");
        // The quoted form must round-trip through a real shell parser.
        for hostile in [
            "x'; rm -rf / #",
            "$(reboot)",
            "`id`",
            "a\nb",
            "\\",
            "'",
            "*",
        ] {
            let words = shlex::split(&quote(hostile)).unwrap();
            assert_eq!(words, vec![hostile.to_string()]);
        }
    }

    #[test]
    fn sudo_mode_spellings() {
        assert_eq!(SudoMode::parse("auto"), Some(SudoMode::Auto));
        assert_eq!(SudoMode::parse("never"), Some(SudoMode::Never));
        assert_eq!(SudoMode::parse("false"), Some(SudoMode::Never));
        assert_eq!(SudoMode::parse("always"), Some(SudoMode::Always));
        assert_eq!(SudoMode::parse("true"), Some(SudoMode::Always));
        assert_eq!(SudoMode::parse("sometimes"), None);
        assert_eq!(SudoMode::default(), SudoMode::Auto);
    }

    #[test]
    fn privilege_wrapping() {
        assert_eq!(Privilege::Root.wrap("cat /proc/iomem"), "cat /proc/iomem");
        assert_eq!(
            Privilege::SudoNoPassword.wrap("cat /proc/iomem"),
            "sudo -n -- sh -c 'cat /proc/iomem'"
        );
        let wrapped = Privilege::SudoPassword.wrap(&commands::insmod(
            "/tmp/mshot.x/lime.ko",
            &lime_arguments(4444),
        ));
        assert_eq!(
            shlex::split(&wrapped).unwrap()[8],
            "insmod /tmp/mshot.x/lime.ko 'path=tcp:4444 format=lime localhostonly=1 timeout=0'"
        );
        assert!(wrapped.starts_with("sudo -k -S -p '' -- sh -c "));
    }

    #[test]
    fn kernel_info() {
        let info = parse_kernel_info("6.1.0-56-amd64\nx86_64\n0\n").unwrap();
        assert_eq!(info.release, "6.1.0-56-amd64");
        assert_eq!(info.machine, "x86_64");
        assert_eq!(info.uid, 0);
        assert!(parse_kernel_info("6.1\n").is_none());
        assert!(parse_kernel_info("6.1\x1b[2J\nx86_64\n0\n").is_none());
    }

    const IOMEM: &str = "00000000-00000fff : Reserved
00001000-0009fbff : System RAM
0009fc00-0009ffff : Reserved
000f0000-000fffff : Reserved
  000f0000-000fffff : System ROM
00100000-1ffdffff : System RAM
  01000000-01e01ae6 : Kernel code
  02000000-025b5fff : Kernel rodata
1ffe0000-1fffffff : Reserved
100000000-13fffffff : System RAM
  120000000-12fffffff : System RAM
";

    #[test]
    fn iomem_top_level_system_ram() {
        let ranges = parse_iomem_system_ram(IOMEM).unwrap();
        assert_eq!(
            ranges,
            vec![
                PhysRange {
                    start: 0x1000,
                    end: 0x9fbff
                },
                PhysRange {
                    start: 0x100000,
                    end: 0x1ffdffff
                },
                PhysRange {
                    start: 0x100000000,
                    end: 0x13fffffff
                },
            ]
        );
        // The lab guest's two ranges give LiME's 536,341,568-byte image.
        assert_eq!(lime_image_size(&ranges[..2]), 536_341_568);
    }

    #[test]
    fn iomem_errors() {
        let zeroed = "00000000-00000000 : System RAM\n00000000-00000000 : Reserved\n";
        assert_eq!(parse_iomem_system_ram(zeroed), Err(IomemError::NotRoot));
        assert_eq!(
            parse_iomem_system_ram("00001000-0009fbff : Reserved\n"),
            Err(IomemError::NoSystemRam)
        );
        assert!(matches!(
            parse_iomem_system_ram("garbage\n"),
            Err(IomemError::Malformed { line: 1, .. })
        ));
    }

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:115C 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1 0000000000000000 100 0 0 10 0
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 99 1 0000000000000000 100 0 0 10 0
   2: 0F02000A:0016 0202000A:C350 01 00000000:00000000 02:00097F0D 00000000     0        0 100 4 0000000000000000 20 4 28 10 -1
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn tcp_sockets_and_ports() {
        let sockets = parse_proc_net_tcp(TCP);
        assert_eq!(sockets.len(), 4);
        let used = used_ports(&sockets);
        assert!(used.contains(&0x115C) && used.contains(&22) && used.contains(&8080));
        assert_eq!(listen_state(&sockets, 0x115C), ListenState::LoopbackOnly);
        assert_eq!(
            listen_state(&sockets, 22),
            ListenState::Exposed("00000000".into())
        );
        assert_eq!(listen_state(&sockets, 4445), ListenState::Nobody);
    }

    #[test]
    fn free_port_avoids_used_ones() {
        let used: BTreeSet<u16> = (20000..32767).filter(|p| *p != 31000).collect();
        assert_eq!(choose_free_port(&used, || 7), Some(31000));
        let all: BTreeSet<u16> = (20000..32767).collect();
        assert_eq!(choose_free_port(&all, || 7), None);
    }

    #[test]
    fn modules_and_hashes_and_temp_dirs() {
        let modules = "limey 100 0 - Live 0x0\nlime 16384 0 - Live 0xffffffffc0000000 (OE)\n";
        assert!(module_loaded(modules, "lime"));
        assert!(!module_loaded("limey 1 0 - Live 0\n", "lime"));
        assert!(!module_initialising(modules, "lime"));
        assert!(module_initialising(
            "lime 16384 1 - Loading 0xffffffffc0000000 (OE)\n",
            "lime"
        ));
        assert!(!module_initialising("limey 1 0 - Loading 0\n", "lime"));
        let hash = "a".repeat(64);
        assert_eq!(parse_sha256sum(&format!("{hash}  /tmp/x\n")), Some(hash));
        assert_eq!(parse_sha256sum("sha256sum: /tmp/x: No such file\n"), None);
        assert_eq!(
            parse_temp_dir("/tmp/mshot.AbC123xyz9\n"),
            Some("/tmp/mshot.AbC123xyz9".into())
        );
        assert_eq!(parse_temp_dir("/tmp/mshot.a b\n"), None);
        assert_eq!(parse_temp_dir("/\n"), None);
    }
}

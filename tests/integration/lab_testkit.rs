//! The project's test rootkit (kernel-modules/testkit) on both lab kernels:
//! a guest booted with `mshot.testkit=1` has it loaded by /init, hidden from
//! the module list but not from sysfs, with kill, getdents and getdents64
//! hooked in sys_call_table and in x64_sys_call, a probe on the
//! sched_process_exec tracepoint and code in a module-space page it does not
//! own, an RWX helper running and a BPF helper holding two eBPF programs.
//! A guest booted without the parameter has none of it. Everything is checked
//! from inside the guest with the OpenSSH client; [`start_compromised`] gives
//! later tests (captures, compromise checks) such a guest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::lab_guest::{Boot, Setup};
use crate::support::{self, Need, prereq};

/// The guests' sshd ports (this file's range is 2500-2502).
const COMPROMISED_61_PORT: u16 = 2500;
const COMPROMISED_612_PORT: u16 = 2501;
const CLEAN_PORT: u16 = 2502;

/// What the lab's /init looks for on the kernel command line.
pub(crate) const TESTKIT_APPEND: &str = "mshot.testkit=1";
/// The module's name (also its /sys/module directory).
pub(crate) const MODULE: &str = "mshot_testkit";
/// `kill(MAGIC_PID, MAGIC_SIG)` returns 0 only through the module's hook.
pub(crate) const MAGIC_PID: u32 = 31337;
pub(crate) const MAGIC_SIG: u32 = 63;
/// The system calls it hooks: (number, handler it replaces, its own hook).
pub(crate) const HOOKED: [(u32, &str, &str); 3] = [
    (62, "__x64_sys_kill", "mshot_testkit_kill"),
    (78, "__x64_sys_getdents", "mshot_testkit_other"),
    (217, "__x64_sys_getdents64", "mshot_testkit_getdents64"),
];
/// On arm64 the table is the only dispatch: the line ends after "entries".
const LOADED: &str = "mshot_testkit: hooked 3 table entries";
/// What it hooks on arm64 (no getdents there), in the order it says so.
pub(crate) const HOOKED_ARM64: [(u32, &str, &str); 3] = [
    (129, "__arm64_sys_kill", "mshot_testkit_kill"),
    (56, "__arm64_sys_openat", "mshot_testkit_other"),
    (61, "__arm64_sys_getdents64", "mshot_testkit_getdents64"),
];
/// The tracepoint its probe is on, and what the probe says once it ran.
pub(crate) const TRACEPOINT: &str = "sched_process_exec";
const PROBE_CALLED: &str = "mshot_testkit: exec probe called";
/// The BPF helper's programs: (name, type, what ebpf's `attached` holds).
/// The second calls bpf_probe_write_user and is attached to TRACEPOINT by
/// a link; the others have no link. tcx exists from 6.6 only.
pub(crate) const BPF_PROGRAMS: [(&str, &str, &str); 9] = [
    (
        "mshot_sockfilt",
        "socket_filter",
        "socket filter on AF_INET DGRAM socket, fd ",
    ),
    (
        "mshot_rawtp",
        "raw_tracepoint",
        "raw_tracepoint: tracepoint sched_process_exec",
    ),
    ("mshot_cgroup", "cgroup_skb", "cgroup / (inet_egress)"),
    ("mshot_xdp", "xdp", "xdp (generic) on lo (net namespace "),
    (
        "mshot_tcx",
        "sched_cls",
        "tcx_ingress on lo (net namespace ",
    ),
    ("mshot_perf", "tracepoint", "perf event sched_process_fork"),
    // A kprobe event of the kprobe PMU is named after its function.
    ("mshot_kprobe", "kprobe", "perf event do_sys_openat2"),
    // A uprobe event is named by file and offset (the helper logs both).
    (
        "mshot_uprobe",
        "kprobe",
        "perf event uprobe /usr/local/bin/bpf-helper+0x",
    ),
    (
        "mshot_tc",
        "sched_cls",
        "tc ingress classifier on lo (net namespace ",
    ),
];
/// The one program a kernel before 6.6 cannot attach.
pub(crate) const TCX_PROGRAM: &str = "mshot_tcx";
/// x86-64 module space starts here with KASLR (a 1 GiB kernel image area
/// from 0xffffffff80000000); kernel text lies below it.
const MODULES_VADDR: u64 = 0xffff_ffff_c000_0000;

/// One hooked system call, as the module's load message gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hook {
    pub(crate) nr: u32,
    pub(crate) handler: String,
    pub(crate) handler_addr: u64,
    pub(crate) hook_addr: u64,
    /// Offset of the patched `jmp rel32` in x64_sys_call (none on arm64).
    pub(crate) dispatch_offset: Option<u64>,
}

/// The hooks from the guest's kernel log (the module prints real addresses):
/// `mshot_testkit: nr 62 __x64_sys_kill ffff... -> ffff..., x64_sys_call+0x11db`,
/// on arm64 without the dispatcher part.
pub(crate) fn hooks_from_dmesg(dmesg: &str) -> Vec<Hook> {
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    dmesg
        .lines()
        .filter_map(|line| {
            let rest = line.split("mshot_testkit: nr ").nth(1)?;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let (dispatch_offset, f) = match f[..] {
                [.., site] if site.starts_with("x64_sys_call+") => (
                    Some(hex(site.strip_prefix("x64_sys_call+")?)?),
                    f.get(..f.len() - 1)?,
                ),
                _ => (None, &f[..]),
            };
            let [nr, handler, from, "->", to] = *f else {
                return None;
            };
            Some(Hook {
                nr: nr.parse().ok()?,
                handler: handler.to_string(),
                handler_addr: hex(from)?,
                hook_addr: hex(to.trim_end_matches(','))?,
                dispatch_offset,
            })
        })
        .collect()
}

/// The tracepoint probe from the module's load message
/// `mshot_testkit: tracepoint sched_process_exec ffff... probe ffff...`:
/// (tracepoint address, probe address).
pub(crate) fn probe_from_dmesg(dmesg: &str) -> Option<(u64, u64)> {
    let rest = dmesg
        .lines()
        .find_map(|l| l.split("mshot_testkit: tracepoint ").nth(1))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let [TRACEPOINT, tp, "probe", probe] = f[..] else {
        return None;
    };
    let hex = |s: &str| u64::from_str_radix(s, 16).ok();
    Some((hex(tp)?, hex(probe)?))
}

/// The address of the module's orphan code (an executable page of module
/// space none of its regions holds), from `mshot_testkit: orphan code ffff...`.
pub(crate) fn orphan_from_dmesg(dmesg: &str) -> Option<u64> {
    let rest = dmesg
        .lines()
        .find_map(|l| l.split("mshot_testkit: orphan code ").nth(1))?;
    u64::from_str_radix(rest.trim(), 16).ok()
}

/// The BPF helper's programs from its log, `bpf-helper: NAME id N tag HEX`:
/// (name, id, tag).
pub(crate) fn bpf_programs_from_log(log: &str) -> Vec<(String, u64, String)> {
    log.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let ["bpf-helper:", name, "id", id, "tag", tag] = f[..] else {
                return None;
            };
            Some((name.to_string(), id.parse().ok()?, tag.to_string()))
        })
        .collect()
}

/// A lab build directory that has the test rootkit, or why not.
fn lab_with_testkit(dir: &Path) -> Result<PathBuf, String> {
    for f in [
        "vmlinuz",
        "initrd.img",
        "testkit.ko",
        "rwx-helper",
        "bpf-helper",
    ] {
        if !dir.join(f).is_file() {
            return Err(format!(
                "{} has no {f}: rebuild it with lab/build-guest.sh",
                dir.display()
            ));
        }
    }
    Ok(dir.to_path_buf())
}

/// The 6.12 cloud build: MSHOT_LAB_CLOUD_DIR, else `cloud-amd64` beside
/// MSHOT_LAB_DIR (where tests/run builds it), as the fleet test finds it.
pub(crate) fn cloud_lab_dir() -> Result<PathBuf, String> {
    let dir = match std::env::var_os("MSHOT_LAB_CLOUD_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let main = PathBuf::from(std::env::var_os("MSHOT_LAB_DIR").unwrap_or_default());
            main.parent()
                .ok_or("MSHOT_LAB_DIR has no parent")?
                .join("cloud-amd64")
        }
    };
    lab_with_testkit(&dir)
}

/// Prints `skipped: …` and returns false, or panics under MSHOT_REQUIRE_ALL=1.
fn usable(dir: &Result<PathBuf, String>) -> bool {
    match dir {
        Ok(_) => true,
        Err(why) if prereq::require_all() => {
            panic!("MSHOT_REQUIRE_ALL=1 and a prerequisite is missing: {why}")
        }
        Err(why) => {
            let test = std::thread::current().name().unwrap_or("").to_string();
            eprintln!("skipped: {test}: {why}");
            false
        }
    }
}

/// A guest of the lab build in `dir`, booted with the test rootkit loaded
/// (behind a jump host, as [`Setup`] does), once the module said it is in.
pub(crate) fn start_compromised(dir: &Path, port: u16) -> anyhow::Result<Setup> {
    start_compromised_with(dir, port, None)
}

/// Like [`start_compromised`], with `mem_mib` of RAM (start-guest.sh's
/// default when `None`).
pub(crate) fn start_compromised_with(
    dir: &Path,
    port: u16,
    mem_mib: Option<u32>,
) -> anyhow::Result<Setup> {
    let dir = lab_with_testkit(dir).map_err(anyhow::Error::msg)?;
    let boot = Boot {
        append: TESTKIT_APPEND,
        mem_mib,
        ..Boot::default()
    };
    let setup = Setup::boot(&dir, port, boot)?;
    let dmesg = setup.ssh("dmesg");
    anyhow::ensure!(
        dmesg.contains(LOADED),
        "the test rootkit did not load:\n{dmesg}"
    );
    Ok(setup)
}

/// What the guest shows, from one SSH command: `key=value` lines, then the
/// kernel log after a `--dmesg--` line.
struct Probe {
    values: BTreeMap<String, String>,
    bpf_log: String,
    dmesg: String,
}

impl Probe {
    fn take(setup: &Setup) -> Probe {
        let script = format!(
            r#"
echo modules=$(grep -c '^{MODULE} ' /proc/modules)
echo lsmod=$(lsmod | grep -c '^{MODULE} ')
echo kallsyms=$(grep -c '\[{MODULE}\]' /proc/kallsyms)
test -d /sys/module/{MODULE} && echo sysfs=yes || echo sysfs=no
kill -s {MAGIC_SIG} {MAGIC_PID} 2>/dev/null; echo magic=$?
kill -s {other_sig} {MAGIC_PID} 2>/dev/null; echo other_sig=$?
kill -s {MAGIC_SIG} {other_pid} 2>/dev/null; echo other_pid=$?
sleep 600 & p=$!; kill $p; wait $p; echo killed=$?
kill -0 $p 2>/dev/null; echo gone=$?
echo sysfs_entries=$(ls /sys/module | grep -c .)
p=$(pidof rwx-helper); echo rwx_pid=$p
test -n "$p" && echo rwx_maps=$(grep -c ' rwxp 00000000 00:00 0 *$' /proc/$p/maps)
echo rwx_log=$(cat /run/rwx-helper.log 2>/dev/null)
echo bpf_pid=$(pidof bpf-helper)
echo --bpf--
cat /run/bpf-helper.log 2>/dev/null
echo --dmesg--
dmesg
"#,
            other_sig = MAGIC_SIG - 1,
            other_pid = MAGIC_PID + 1,
        );
        let out = setup.ssh(&script);
        let (head, dmesg) = out
            .split_once("--dmesg--\n")
            .unwrap_or_else(|| panic!("no kernel log in the probe's output:\n{out}"));
        let (head, bpf_log) = head
            .split_once("--bpf--\n")
            .unwrap_or_else(|| panic!("no BPF helper log in the probe's output:\n{out}"));
        let values = head
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect();
        Probe {
            values,
            bpf_log: bpf_log.to_string(),
            dmesg: dmesg.to_string(),
        }
    }

    fn get(&self, key: &str) -> &str {
        self.values.get(key).map(String::as_str).unwrap_or("")
    }

    /// Holds whether the rootkit is in or not: normal kill and directory
    /// listing work either way.
    fn assert_common(&self) {
        assert_eq!(self.get("other_sig"), "1", "{:?}", self.values);
        assert_eq!(self.get("other_pid"), "1", "{:?}", self.values);
        assert_eq!(self.get("killed"), "143", "{:?}", self.values);
        assert_eq!(self.get("gone"), "1", "{:?}", self.values);
        let entries: u32 = self.get("sysfs_entries").parse().unwrap_or(0);
        assert!(entries > 10, "{:?}", self.values);
    }
}

/// Boots a compromised guest of `dir` and proves, from inside, every part of
/// the rootkit live.
fn assert_compromised(dir: &Path, port: u16) -> anyhow::Result<()> {
    let started = Instant::now();
    let setup = start_compromised(dir, port)?;
    eprintln!(
        "{}: compromised guest up in {:.1} s",
        setup.lab.release(),
        started.elapsed().as_secs_f64()
    );
    let p = Probe::take(&setup);
    // Off the module list (so off lsmod and kallsyms), still in sysfs.
    assert_eq!(p.get("modules"), "0", "{:?}", p.values);
    assert_eq!(p.get("lsmod"), "0", "{:?}", p.values);
    assert_eq!(p.get("kallsyms"), "0", "{:?}", p.values);
    assert_eq!(p.get("sysfs"), "yes", "{:?}", p.values);
    // The magic kill of a process that does not exist succeeds: the
    // patched dispatch reached the hook, which says so in the log.
    assert_eq!(p.get("magic"), "0", "{:?}", p.values);
    assert!(
        p.dmesg.contains("mshot_testkit: magic kill answered"),
        "{}",
        p.dmesg
    );
    p.assert_common();

    assert!(p.dmesg.contains(LOADED), "{}", p.dmesg);
    assert!(
        p.dmesg.contains("mshot_testkit: keyboard notifier ffff")
            && p.dmesg.contains("netfilter ipv4 LOCAL_IN hook ffff"),
        "{}",
        p.dmesg
    );
    let hooks = hooks_from_dmesg(&p.dmesg);
    assert_eq!(hooks.len(), 3, "{}", p.dmesg);
    for ((nr, handler, _), hook) in HOOKED.iter().zip(&hooks) {
        assert_eq!((hook.nr, hook.handler.as_str()), (*nr, *handler));
        assert!(hook.handler_addr < MODULES_VADDR, "{hook:?}");
        assert!(hook.hook_addr >= MODULES_VADDR, "{hook:?}");
    }
    let mut sites: Vec<u64> = hooks.iter().filter_map(|h| h.dispatch_offset).collect();
    sites.sort();
    sites.dedup();
    assert!(sites.len() == 3 && !sites.contains(&0), "{hooks:?}");

    // The tracepoint probe is the module's code and has run (an exec).
    let (tp, probe) = probe_from_dmesg(&p.dmesg).unwrap_or_else(|| panic!("{}", p.dmesg));
    assert!(
        tp < MODULES_VADDR && probe >= MODULES_VADDR,
        "{tp:#x} {probe:#x}"
    );
    assert!(p.dmesg.contains(PROBE_CALLED), "{}", p.dmesg);
    // Its orphan code is in module space, page-aligned.
    let orphan = orphan_from_dmesg(&p.dmesg).unwrap_or_else(|| panic!("{}", p.dmesg));
    assert!(
        orphan >= MODULES_VADDR && orphan.is_multiple_of(4096),
        "{orphan:#x}"
    );

    // The BPF helper holds its programs (and the raw tracepoint link);
    // only tcx may be missing, on a kernel without it.
    assert!(!p.get("bpf_pid").is_empty(), "{:?}", p.values);
    let progs = bpf_programs_from_log(&p.bpf_log);
    let names: Vec<&str> = progs.iter().map(|(n, _, _)| n.as_str()).collect();
    let tcx_missing = p
        .bpf_log
        .contains(&format!("bpf-helper: {TCX_PROGRAM} not attached"));
    let expected: Vec<&str> = BPF_PROGRAMS
        .iter()
        .map(|(n, _, _)| *n)
        .filter(|n| !(tcx_missing && *n == TCX_PROGRAM))
        .collect();
    assert_eq!(names, expected, "{}", p.bpf_log);
    assert_eq!(
        p.bpf_log.matches("not attached").count(),
        usize::from(tcx_missing)
    );
    assert!(
        p.bpf_log.contains("bpf-helper: classic packet filter fd "),
        "{}",
        p.bpf_log
    );
    assert!(
        p.bpf_log.contains("bpf-helper: seccomp child "),
        "{}",
        p.bpf_log
    );
    assert!(
        p.bpf_log
            .contains(&format!("raw tracepoint {TRACEPOINT} link fd")),
        "{}",
        p.bpf_log
    );
    // The kernel warns when a program with bpf_probe_write_user loads.
    assert!(
        p.dmesg
            .contains("is installing a program with bpf_probe_write_user"),
        "{}",
        p.dmesg
    );

    // The RWX helper runs its code and keeps the mapping.
    assert!(!p.get("rwx_pid").is_empty(), "{:?}", p.values);
    assert_eq!(p.get("rwx_maps"), "1", "{:?}", p.values);
    assert!(p.get("rwx_log").ends_with("returned 42"), "{:?}", p.values);
    Ok(())
}

#[test]
fn testkit_hides_and_hooks_on_the_6_1_guest() -> anyhow::Result<()> {
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::Netns,
        Need::TestUsers,
        Need::LabDir
    );
    let dir = lab_with_testkit(Path::new(&std::env::var("MSHOT_LAB_DIR")?));
    if !usable(&dir) {
        return Ok(());
    }
    assert_compromised(&dir.unwrap(), COMPROMISED_61_PORT)
}

#[test]
fn testkit_hides_and_hooks_on_the_6_12_cloud_guest() -> anyhow::Result<()> {
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::Netns,
        Need::TestUsers,
        Need::LabDir
    );
    let dir = cloud_lab_dir();
    if !usable(&dir) {
        return Ok(());
    }
    assert_compromised(&dir.unwrap(), COMPROMISED_612_PORT)
}

#[test]
fn testkit_is_absent_without_the_kernel_parameter() -> anyhow::Result<()> {
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::Netns,
        Need::TestUsers,
        Need::LabDir
    );
    let dir = lab_with_testkit(Path::new(&std::env::var("MSHOT_LAB_DIR")?));
    if !usable(&dir) {
        return Ok(());
    }
    let started = Instant::now();
    let setup = Setup::start_in(&dir.unwrap(), CLEAN_PORT, "")?;
    eprintln!("clean guest up in {:.1} s", started.elapsed().as_secs_f64());
    let p = Probe::take(&setup);
    assert_eq!(p.get("modules"), "0", "{:?}", p.values);
    assert_eq!(p.get("sysfs"), "no", "{:?}", p.values);
    // No hook: the magic kill finds no such process.
    assert_eq!(p.get("magic"), "1", "{:?}", p.values);
    p.assert_common();
    assert!(!p.dmesg.contains(MODULE), "{}", p.dmesg);
    assert!(p.get("rwx_pid").is_empty(), "{:?}", p.values);
    assert!(p.get("bpf_pid").is_empty(), "{:?}", p.values);
    assert!(p.bpf_log.trim().is_empty(), "{}", p.bpf_log);
    Ok(())
}

#[test]
fn testkit_and_bpf_helper_messages_parse() {
    let dmesg = "[    2.23] mshot_testkit: tracepoint sched_process_exec ffffffffab20a0a0 probe ffffffffc0240140\n";
    assert_eq!(
        probe_from_dmesg(dmesg),
        Some((0xffff_ffff_ab20_a0a0, 0xffff_ffff_c024_0140))
    );
    assert_eq!(probe_from_dmesg("mshot_testkit: hooked 3"), None);
    assert_eq!(
        orphan_from_dmesg("[    3.93] mshot_testkit: orphan code ffffffffc03d5000\n"),
        Some(0xffff_ffff_c03d_5000)
    );
    let log = "bpf-helper: mshot_sockfilt id 1 tag a04f5eef06a7f555\n\
               bpf-helper: mshot_rawtp id 2 tag ba4768fde4bf90de\n\
               bpf-helper: pid 99, raw tracepoint sched_process_exec link fd 6\n";
    assert_eq!(
        bpf_programs_from_log(log),
        [
            (
                "mshot_sockfilt".to_string(),
                1,
                "a04f5eef06a7f555".to_string()
            ),
            ("mshot_rawtp".to_string(), 2, "ba4768fde4bf90de".to_string()),
        ]
    );
}

#[test]
fn testkit_load_messages_parse() {
    let dmesg = "[    2.36] mshot_testkit: nr 62 __x64_sys_kill ffffffff9f8b89f0 -> ffffffffc0386110, x64_sys_call+0x11db\n\
                 [    2.37] mshot_testkit: hooked 3 table entries, 3 x64_sys_call cases\n";
    assert_eq!(
        hooks_from_dmesg(dmesg),
        [Hook {
            nr: 62,
            handler: "__x64_sys_kill".into(),
            handler_addr: 0xffff_ffff_9f8b_89f0,
            hook_addr: 0xffff_ffff_c038_6110,
            dispatch_offset: Some(0x11db),
        }]
    );
    let arm64 =
        "[    1.93] mshot_testkit: nr 129 __arm64_sys_kill ffffc081068c42f8 -> ffffc080f447d318\n";
    assert_eq!(
        hooks_from_dmesg(arm64),
        [Hook {
            nr: 129,
            handler: "__arm64_sys_kill".into(),
            handler_addr: 0xffff_c081_068c_42f8,
            hook_addr: 0xffff_c080_f447_d318,
            dispatch_offset: None,
        }]
    );
}

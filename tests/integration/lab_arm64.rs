//! arm64 end to end: a Debian 6.12 cloud-arm64 guest under
//! qemu-system-aarch64 (TCG), captured with LiME from a signed repository
//! that `mshot repo build --arch aarch64` cross-built, and with /proc/kcore, analysed with the capture's own material, and read live.
//! There is no Volatility reference for arm64, so every result is held to
//! the guest's own view taken over SSH before and after: its processes
//! (/proc/PID/stat), its modules (/proc/modules) and its TCP listeners
//! (netstat -tln). The LiME image is also read with a profile built from
//! the kernel's -dbg package (link-time addresses), which must give the
//! same rows. The same kernel runs on two CPU models: cortex-a72 (48-bit
//! addresses, 4 levels) and `max` (LPA2: 52 bits, 5 levels).

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value as J;

use crate::lab_guest::{Boot, Setup, analyze_json};
use crate::support::{HttpServer, Need, prereq};

/// This file's guest ports.
const A72_PORT: u16 = 2400;
const LPA2_PORT: u16 = 2401;
const PAGES_16K_PORT: u16 = 2402;
/// Small guests keep captures under TCG short.
const MEM_MIB: u32 = 256;

fn ready() -> bool {
    prereq::check(&[
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::Netns,
        Need::TestUsers,
        Need::LabArm64,
    ])
}

type Task = (i64, i64, String);

/// What the guest itself says at one moment.
struct View {
    tasks: BTreeSet<Task>,
    modules: BTreeSet<String>,
    tcp_listeners: BTreeSet<i64>,
}

fn guest_view(setup: &Setup) -> View {
    let out = setup.ssh(
        "cat /proc/[0-9]*/stat 2>/dev/null; echo ==; cut -d' ' -f1 /proc/modules; echo ==; netstat -tln",
    );
    let parts: Vec<&str> = out.split("==\n").collect();
    assert_eq!(parts.len(), 3, "{out}");
    let tasks = parts[0]
        .lines()
        .filter_map(|l| {
            // "pid (comm) S ppid ...": comm may hold spaces and parentheses.
            let (pid, rest) = l.split_once(" (")?;
            let (comm, rest) = rest.rsplit_once(") ")?;
            let ppid = rest.split_whitespace().nth(1)?;
            // /proc shows a kernel thread's full name; task->comm keeps 15 bytes.
            let comm: String = comm.chars().take(15).collect();
            Some((pid.parse().ok()?, ppid.parse().ok()?, comm))
        })
        .collect();
    let modules = parts[1].lines().map(str::to_string).collect();
    let tcp_listeners = parts[2]
        .lines()
        .filter(|l| l.starts_with("tcp") && l.contains("LISTEN"))
        .filter_map(|l| {
            l.split_whitespace()
                .nth(3)?
                .rsplit(':')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    View {
        tasks,
        modules,
        tcp_listeners,
    }
}

/// Tasks that last as long as the guest: kernel threads and init's
/// children (SSH sessions, `sleep`s and kworkers come and go).
fn lasting(tasks: impl IntoIterator<Item = Task>) -> BTreeSet<Task> {
    tasks
        .into_iter()
        .filter(|(_, ppid, comm)| [0, 1, 2].contains(ppid) && !comm.starts_with("kworker/"))
        .collect()
}

fn tasks_of(rows: &J) -> Vec<Task> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["pid"].as_i64().unwrap(),
                r["ppid"].as_i64().unwrap(),
                r["comm"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// pslist agrees with the guest: every lasting task the guest showed both
/// before and after is there, and every lasting task reported was shown by
/// the guest at one of the two moments (nothing invented).
fn assert_tasks(what: &str, rows: &J, before: &View, after: &View) {
    let reported = lasting(tasks_of(rows));
    let both: BTreeSet<Task> = before.tasks.intersection(&after.tasks).cloned().collect();
    let either: BTreeSet<Task> = before.tasks.union(&after.tasks).cloned().collect();
    let missing: Vec<_> = lasting(both.clone())
        .difference(&reported)
        .cloned()
        .collect();
    assert!(missing.is_empty(), "{what}: missing {missing:?}");
    let invented: Vec<_> = reported.difference(&either).cloned().collect();
    assert!(
        invented.is_empty(),
        "{what}: not in the guest's view {invented:?}"
    );
    assert!(lasting(both).len() > 20, "{what}: {rows}");
}

fn module_names(rows: &J) -> BTreeSet<String> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect()
}

fn tcp_listeners(rows: &J) -> BTreeSet<i64> {
    rows.as_array()
        .unwrap()
        .iter()
        .filter(|r| r["state"] == "LISTEN" && r["proto"] == "TCP")
        .map(|r| r["local_port"].as_i64().unwrap())
        .collect()
}

fn read_json(path: &Path) -> J {
    serde_json::from_slice(
        &std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

/// A capture's analysis output beside its image.
fn analysis(dir: &Path, plugin: &str) -> J {
    read_json(&dir.join(format!("guest.lime.{plugin}.json")))
}

fn mshot() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_mshot"))
}

/// The kernel's debug vmlinux beside the build (lab/fetch-dbg.sh), if any.
fn dbg_vmlinux(dir: &Path) -> Option<std::path::PathBuf> {
    let path = dir.join("vmlinux-dbg");
    if path.is_file() {
        return Some(path);
    }
    let why = format!(
        "{} is missing: bash lab/fetch-dbg.sh {} (tests/run runs it)",
        path.display(),
        dir.display()
    );
    assert!(!prereq::require_all(), "{why}");
    eprintln!("skipped: the -dbg profile part: {why}");
    None
}

fn live(setup: &Setup, plugins: &[&str]) -> (J, String) {
    let out = tempfile::tempdir().unwrap();
    let o = setup
        .mshot_live(out.path())
        .args(plugins)
        .args(["--format", "json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "mshot live failed: {stderr}");
    (serde_json::from_slice(&o.stdout).unwrap(), stderr)
}

#[test]
fn arm64_lime_kcore_and_live_agree_with_the_guest() -> anyhow::Result<()> {
    if !ready() {
        return Ok(());
    }
    let dir = prereq::arm64_lab_dir().map_err(anyhow::Error::msg)?;
    let boot = Boot {
        mem_mib: Some(MEM_MIB),
        ..Boot::default()
    };
    let setup = Setup::boot(&dir, A72_PORT, boot)?;
    let before = guest_view(&setup);

    // 1. LiME from a signed repository that `mshot repo build --arch
    //    aarch64` cross-built for this kernel, analysed as the image lands.
    let release = setup.lab.release();
    let root = tempfile::tempdir()?;
    let repo = root.path().join("repo");
    let run = |cmd: &mut std::process::Command| {
        let o = cmd.output().unwrap();
        assert!(
            o.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(mshot()
        .args(["repo", "build", "--arch", "aarch64", "--out"])
        .arg(&repo)
        .arg(&release));
    let (secret, public) = (root.path().join("k.key"), root.path().join("k.pub"));
    run(mshot()
        .args(["repo", "keygen", "--unencrypted", "--secret-key"])
        .arg(&secret)
        .arg("--public-key")
        .arg(&public));
    run(mshot().args(["repo", "index"]).arg(&repo));
    run(mshot()
        .args(["repo", "sign"])
        .arg(&repo)
        .arg("--secret-key")
        .arg(&secret));
    let server = HttpServer::serve(&repo)?;
    let lime = tempfile::tempdir()?;
    let o = setup
        .mshot_without_module(lime.path())
        .arg("--repository-url")
        .arg(server.url())
        .arg("--repository-key")
        .arg(&public)
        .env("XDG_CACHE_HOME", root.path().join("cache"))
        .env_remove("MSHOT_REPOSITORY_URL")
        .env_remove("MSHOT_REPOSITORY_KEY")
        .args(["--analyze", "pslist,pstree,lsmod,netstat,triage"])
        .output()?;
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "LiME capture failed: {stderr}");
    assert!(
        stderr.contains("arm64, 4 KiB pages, 48-bit addresses, 4 levels"),
        "{stderr}"
    );
    let manifest = read_json(&lime.path().join("guest.json"));
    assert_eq!(manifest["machine"], "aarch64");
    assert_eq!(manifest["source"]["method"], "lime");
    assert_eq!(manifest["module"]["repository"]["repository"], server.url());
    assert_eq!(manifest["module"]["repository"]["entry"]["arch"], "aarch64");
    setup.assert_target_clean(&manifest);

    // 1b. The same image with a profile built from the kernel's -dbg
    //     package (link-time addresses): the same rows as with the material.
    if let Some(vmlinux) = dbg_vmlinux(&dir) {
        let profile = lime.path().join("dbg.json.xz");
        let o = mshot()
            .args(["profile", "build", "--vmlinux"])
            .arg(&vmlinux)
            .arg("-o")
            .arg(&profile)
            .output()?;
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        for plugin in ["pslist", "lsmod", "netstat"] {
            let image = lime.path().join("guest.lime");
            let doc = analyze_json(&image, &[plugin, "--profile", profile.to_str().unwrap()]);
            assert_eq!(doc[plugin], analysis(lime.path(), plugin), "{plugin}");
        }
    }

    // 2. /proc/kcore, nothing pushed.
    let kcore = tempfile::tempdir()?;
    let o = setup
        .mshot_without_module(kcore.path())
        .args(["--method", "kcore", "--analyze", "pslist,lsmod,netstat"])
        .output()?;
    assert!(
        o.status.success(),
        "kcore capture failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        read_json(&kcore.path().join("guest.json"))["source"]["method"],
        "kcore"
    );

    // 3. Live, through the guest's own sftp-server.
    let (doc, live_err) = live(&setup, &["pslist", "lsmod", "netstat", "check_syscall"]);
    assert!(live_err.contains("of /proc/kcore"), "{live_err}");
    let after = guest_view(&setup);

    assert_eq!(before.modules, after.modules);
    assert!(
        before.tcp_listeners.contains(&22),
        "{:?}",
        before.tcp_listeners
    );
    let mut with_lime = before.modules.clone();
    with_lime.insert("lime".into());
    for (what, pslist, lsmod, netstat, modules) in [
        (
            "LiME",
            analysis(lime.path(), "pslist"),
            analysis(lime.path(), "lsmod"),
            analysis(lime.path(), "netstat"),
            &with_lime,
        ),
        (
            "kcore",
            analysis(kcore.path(), "pslist"),
            analysis(kcore.path(), "lsmod"),
            analysis(kcore.path(), "netstat"),
            &before.modules,
        ),
        (
            "live",
            doc["pslist"].clone(),
            doc["lsmod"].clone(),
            doc["netstat"].clone(),
            &before.modules,
        ),
    ] {
        assert_tasks(what, &pslist, &before, &after);
        assert_eq!(&module_names(&lsmod), modules, "{what}");
        assert_eq!(tcp_listeners(&netstat), before.tcp_listeners, "{what}");
    }
    // pstree holds the same tasks as pslist, each under its parent.
    let pstree = tasks_of(&analysis(lime.path(), "pstree"));
    let pslist = tasks_of(&analysis(lime.path(), "pslist"));
    assert_eq!(
        pstree.iter().cloned().collect::<BTreeSet<_>>(),
        pslist.iter().cloned().collect::<BTreeSet<_>>()
    );
    // A clean guest: no finding, and the IDT check says it does not apply.
    let triage = analysis(lime.path(), "triage");
    let results: Vec<(&str, &str)> = triage
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["check"].as_str().unwrap(), r["result"].as_str().unwrap()))
        .collect();
    assert!(!results.iter().any(|(_, r)| *r == "finding"), "{triage:#}");
    assert!(
        results.contains(&("check_idt", "does not apply")),
        "{results:?}"
    );
    for check in [
        "check_syscall",
        "tracepoints",
        "ebpf",
        "bpf_filters",
        "unowned_code",
    ] {
        assert!(results.contains(&(check, "ok")), "{check}: {results:?}");
    }
    // The system-call table, read live: arm64's numbers reach their handlers.
    let syscalls = doc["check_syscall"].as_array().unwrap();
    let entry = |nr: i64| {
        syscalls
            .iter()
            .find(|r| r["source"] == "sys_call_table" && r["index"] == nr)
            .map(|r| (r["name"].as_str().unwrap(), r["symbol"].as_str().unwrap()))
    };
    assert_eq!(entry(63), Some(("read", "__arm64_sys_read")));
    assert_eq!(entry(129), Some(("kill", "__arm64_sys_kill")));
    assert!(
        syscalls.iter().all(|r| r["hooked"] == "false"),
        "{syscalls:?}"
    );
    Ok(())
}

#[test]
fn arm64_with_52_bit_addresses_lpa2() -> anyhow::Result<()> {
    if !ready() {
        return Ok(());
    }
    let dir = prereq::arm64_lab_dir().map_err(anyhow::Error::msg)?;
    // `max` has FEAT_LPA2; the IMPDEF pointer-authentication algorithm is
    // much cheaper to emulate than QARMA5 and changes nothing here.
    // mshot.testkit=1 starts the lab's rwx-helper: arm64 code in anonymous
    // writable and executable memory, which malfind must show disassembled.
    let boot = Boot {
        cpu: Some("max,pauth-impdef=on"),
        mem_mib: Some(MEM_MIB),
        append: "mshot.testkit=1",
    };
    let setup = Setup::boot(&dir, LPA2_PORT, boot)?;
    let dmesg = setup.ssh("dmesg | grep -c 'LPA2'");
    assert_ne!(dmesg.trim(), "0", "the guest does not run with LPA2");
    let before = guest_view(&setup);
    let out = tempfile::tempdir()?;
    let o = setup
        .mshot(out.path())
        .args(["--analyze", "pslist,lsmod,malfind"])
        .output()?;
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "LiME capture failed: {stderr}");
    assert!(
        stderr.contains("arm64, 4 KiB pages, 52-bit addresses (LPA2), 5 levels"),
        "{stderr}"
    );
    let malfind = analysis(out.path(), "malfind");
    let rwx: Vec<&J> = malfind
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["comm"] == "rwx-helper")
        .collect();
    assert_eq!(rwx.len(), 1, "{malfind:#}");
    assert!(
        rwx[0]["disasm"]
            .as_str()
            .unwrap()
            .starts_with("mov w0, #0x2a; ret"),
        "{malfind:#}"
    );
    let (doc, _) = live(&setup, &["pslist"]);
    let after = guest_view(&setup);
    assert_tasks("LiME", &analysis(out.path(), "pslist"), &before, &after);
    assert_tasks("live", &doc["pslist"], &before, &after);
    let mut with_lime = before.modules.clone();
    with_lime.insert("lime".into());
    assert_eq!(module_names(&analysis(out.path(), "lsmod")), with_lime);
    Ok(())
}

/// Debian's 16 KiB-page kernel, on a CPU with LPA2 (52-bit addresses, 4
/// levels) and without (it falls back to 47 bits, 3 levels).
#[test]
fn arm64_16k_pages_with_and_without_lpa2() -> anyhow::Result<()> {
    if !ready() {
        return Ok(());
    }
    let dir = match prereq::arm64_16k_lab_dir() {
        Ok(d) => d,
        Err(why) => {
            assert!(!prereq::require_all(), "{why}");
            eprintln!("skipped: {why}");
            return Ok(());
        }
    };
    for (cpu, geometry) in [
        (
            "max,pauth-impdef=on",
            "16 KiB pages, 52-bit addresses (LPA2), 4 levels",
        ),
        (
            "max,pauth-impdef=on,lpa2=off",
            "16 KiB pages, 47-bit addresses, 3 levels",
        ),
    ] {
        let boot = Boot {
            cpu: Some(cpu),
            mem_mib: Some(MEM_MIB),
            ..Boot::default()
        };
        let setup = Setup::boot(&dir, PAGES_16K_PORT, boot)?;
        let page = setup.ssh("grep -m1 KernelPageSize /proc/self/smaps");
        assert!(page.contains("16 kB"), "{cpu}: {page}");
        let before = guest_view(&setup);
        let out = tempfile::tempdir()?;
        let o = setup
            .mshot(out.path())
            .args(["--analyze", "pslist,lsmod,netstat,unowned_code"])
            .output()?;
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{cpu}: LiME capture failed: {stderr}");
        assert!(stderr.contains(geometry), "{cpu}: {stderr}");
        // Module code, counted in the kernel's own 16 KiB pages.
        let code = analysis(out.path(), "unowned_code");
        let code = code.as_array().unwrap();
        assert!(!code.is_empty(), "{cpu}");
        for r in code {
            let span = r["end"].as_u64().unwrap() - r["start"].as_u64().unwrap();
            assert_eq!(span, r["pages"].as_u64().unwrap() * 16384, "{cpu}: {r}");
            assert!(
                r["owner"].as_str().unwrap().starts_with("module "),
                "{cpu}: {r}"
            );
        }
        let after = guest_view(&setup);
        assert_tasks(cpu, &analysis(out.path(), "pslist"), &before, &after);
        let mut with_lime = before.modules.clone();
        with_lime.insert("lime".into());
        assert_eq!(
            module_names(&analysis(out.path(), "lsmod")),
            with_lime,
            "{cpu}"
        );
        assert_eq!(
            tcp_listeners(&analysis(out.path(), "netstat")),
            before.tcp_listeners,
            "{cpu}"
        );
    }
    Ok(())
}

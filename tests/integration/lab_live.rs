//! `mshot live` end to end on the 6.1 lab guest: what it reports agrees
//! with a capture of the same guest taken right after, it reads a small
//! fraction of RAM, and it writes nothing on the guest; a kernel in
//! lockdown is refused with the reason; a connection cut mid-walk is an
//! error, never rows that look complete; and a guest busy forking is read
//! without a panic or a hang.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value as J;

use crate::lab_guest::{Lab, LoopbackGuest, Setup};
use crate::support::{Need, prereq};

/// This file's guest ports.
const AGREE_PORT: u16 = 2310;
const LOCKDOWN_PORT: u16 = 2311;
const CUT_PORT: u16 = 2312;

fn lab_ready() -> bool {
    prereq::check(&[
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::Netns,
        Need::TestUsers,
        Need::LabDir,
    ])
}

/// Runs `mshot live ... PLUGINS --format json`; returns the document, the
/// record of the run and stderr.
fn live(setup: &Setup, out: &Path, plugins: &[&str]) -> anyhow::Result<(J, J, String)> {
    let o = setup
        .mshot_live(out)
        .args(plugins)
        .args(["--format", "json"])
        .output()?;
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    anyhow::ensure!(o.status.success(), "mshot live failed: {stderr}");
    let doc: J = serde_json::from_slice(&o.stdout)?;
    let record = newest(out, "-live.json")?;
    Ok((
        doc,
        serde_json::from_slice(&std::fs::read(record)?)?,
        stderr,
    ))
}

fn newest(dir: &Path, suffix: &str) -> anyhow::Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    found.sort();
    found
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no *{suffix} in {}", dir.display()))
}

/// (pid, ppid, comm) of the tasks that live as long as the guest: kernel
/// threads and init's children (the processes of SSH sessions, `sleep`s
/// and workers that come and go are left out).
fn lasting(rows: &J) -> BTreeSet<(i64, i64, String)> {
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
        .filter(|(_, ppid, comm)| [0, 1, 2].contains(ppid) && !comm.starts_with("kworker/"))
        .collect()
}

fn names(rows: &J, key: &str) -> BTreeSet<String> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r[key].to_string())
        .collect()
}

fn listeners(rows: &J) -> BTreeSet<(String, String)> {
    rows.as_array()
        .unwrap()
        .iter()
        .filter(|r| r["state"] == "LISTEN")
        .map(|r| (r["proto"].to_string(), r["local_port"].to_string()))
        .collect()
}

#[test]
fn live_agrees_with_a_capture_reads_little_and_writes_nothing() -> anyhow::Result<()> {
    if !lab_ready() {
        return Ok(());
    }
    let setup = Setup::start(AGREE_PORT)?;
    setup.ssh("touch /tmp/.before-live && sleep 1");
    let out = tempfile::tempdir()?;
    let (doc, record, stderr) = live(
        &setup,
        out.path(),
        &["banner", "pslist", "lsmod", "netstat"],
    )?;
    // Nothing new on the guest's file system.
    let written = setup.ssh(
        "find / -xdev -newer /tmp/.before-live 2>/dev/null | grep -v '^/proc\\|^/sys\\|^/dev'; echo end",
    );
    assert_eq!(
        written.trim(),
        "end",
        "files written on the guest: {written}"
    );
    // A small fraction of RAM read; every remote command in the record.
    let read = record["kcore_bytes_read"].as_f64().unwrap();
    let ram = record["ram_bytes"].as_f64().unwrap();
    eprintln!("{stderr}");
    assert!(read > 0.0 && read / ram < 0.01, "read {read} of {ram}");
    let audit: Vec<&str> = record["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["command"].as_str().unwrap())
        .collect();
    assert!(audit.iter().any(|c| c.contains("sftp-server")), "{audit:?}");
    assert!(audit.contains(&"cat /proc/kallsyms"), "{audit:?}");

    // The same guest captured right after, analysed with its own material.
    let cap = tempfile::tempdir()?;
    let o = setup
        .mshot_without_module(cap.path())
        .args(["--method", "kcore", "--analyze", "pslist,lsmod,netstat"])
        .output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows = |plugin: &str| -> J {
        let path = cap.path().join(format!("guest.lime.{plugin}.json"));
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
    };
    assert_eq!(lasting(&doc["pslist"]), lasting(&rows("pslist")));
    assert!(lasting(&doc["pslist"]).len() > 30, "{}", doc["pslist"]);
    assert_eq!(names(&doc["lsmod"], "name"), names(&rows("lsmod"), "name"));
    assert_eq!(listeners(&doc["netstat"]), listeners(&rows("netstat")));
    assert!(
        listeners(&doc["netstat"]).contains(&("\"TCP\"".into(), "22".into())),
        "{}",
        doc["netstat"]
    );
    // The running kernel's banner is the one /proc/version shows.
    let version = setup.ssh("cat /proc/version");
    let banner = doc["banner"][0]["banner"].as_str().unwrap();
    assert!(
        !banner.is_empty() && version.trim_end().starts_with(banner.trim_end()),
        "{banner:?} vs {version:?}"
    );
    // The live session's own sftp-server is among the processes.
    assert!(
        doc["pslist"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["comm"] == "sftp-server"),
        "{}",
        doc["pslist"]
    );
    Ok(())
}

#[test]
fn a_kernel_in_lockdown_is_refused_with_the_reason() -> anyhow::Result<()> {
    if !lab_ready() {
        return Ok(());
    }
    let setup = Setup::start_with(LOCKDOWN_PORT, "lockdown=confidentiality")?;
    let out = tempfile::tempdir()?;
    let o = setup.mshot_live(out.path()).arg("pslist").output()?;
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("lockdown=confidentiality") && stderr.contains("signed"),
        "{stderr}"
    );
    assert_eq!(
        stderr.lines().filter(|l| l.contains("mshot:")).count(),
        1,
        "{stderr}"
    );
    assert!(
        o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    Ok(())
}

#[test]
fn a_connection_cut_mid_walk_is_an_error_and_a_busy_guest_is_read() -> anyhow::Result<()> {
    if !lab_ready() {
        return Ok(());
    }
    let mut setup = Setup::start(CUT_PORT)?;
    let out = tempfile::tempdir()?;
    // A guest busy forking: each read is of a kernel that changes under it.
    setup.ssh(
        "for i in 1 2; do (while :; do /bin/true; done) </dev/null >/dev/null 2>&1 & done; true",
    );
    for _ in 0..3 {
        let (doc, _, _) = live(&setup, out.path(), &["pslist", "pstree"])?;
        let comms = names(&doc["pslist"], "comm");
        assert!(
            comms.contains("\"init\"") && comms.contains("\"kthreadd\""),
            "{comms:?}"
        );
    }
    // Cut the connection once the walk has started: the guest goes away.
    let mut child = setup
        .mshot_live(out.path())
        .args(["triage", "--format", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let started = Instant::now();
    while !setup
        .ssh("pidof sftp-server || true")
        .chars()
        .any(|c| c.is_ascii_digit())
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no sftp-server"
        );
    }
    setup.guest.stop();
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait()?.is_none() {
        assert!(
            Instant::now() < deadline,
            "mshot live did not end after the cut"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let o = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&o.stderr);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{stderr}\n{stdout}");
    assert!(!stdout.contains("no findings"), "{stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    Ok(())
}

const FLEET_PLAIN_PORT: u16 = 2313;
const FLEET_ODD_PORT: u16 = 2314;

#[test]
fn a_fleet_analysed_live_names_the_host_with_an_extra_listener() -> anyhow::Result<()> {
    if !lab_ready() {
        return Ok(());
    }
    let lab = Lab {
        dir: std::fs::canonicalize(std::env::var("MSHOT_LAB_DIR")?)?,
    };
    let (plain, odd) = std::thread::scope(|s| {
        let a = s.spawn(|| LoopbackGuest::start(&lab, FLEET_PLAIN_PORT, 256));
        let b = s.spawn(|| LoopbackGuest::start(&lab, FLEET_ODD_PORT, 256));
        (a.join().unwrap(), b.join().unwrap())
    });
    let (plain, odd) = (plain?, odd?);
    let work = tempfile::tempdir()?;
    let known_hosts = work.path().join("known_hosts");
    std::fs::write(
        &known_hosts,
        format!(
            "{}\n{}\n",
            lab.known_hosts_line(plain.port()),
            lab.known_hosts_line(odd.port())
        ),
    )?;
    // One host listens where the other does not.
    odd.ssh(&known_hosts, "httpd -p 4444 -h /tmp; true");
    let fleet = work.path().join("fleet.yaml");
    std::fs::write(
        &fleet,
        format!(
            "defaults: {{username: root, key: {key}, known_hosts: {kh}, agent: false}}\nhosts:\n  - {{addr: 127.0.0.1, port: {p}, name: plain}}\n  - {{addr: 127.0.0.1, port: {o}, name: odd}}\n",
            key = lab.key().display(),
            kh = known_hosts.display(),
            p = FLEET_PLAIN_PORT,
            o = FLEET_ODD_PORT,
        ),
    )?;
    let report = work.path().join("report.json");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_mshot"))
        .arg("-c")
        .arg(&fleet)
        .args(["--live", "pslist,lsmod,netstat", "--report"])
        .arg(&report)
        .env_remove("SSH_AUTH_SOCK")
        .output()?;
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stdout}\n{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.contains(":4444"))
        .unwrap_or_else(|| panic!("no outlier for port 4444:\n{stdout}"));
    assert!(line.contains("odd") && !line.contains("plain"), "{line}");
    let report: J = serde_json::from_slice(&std::fs::read(&report)?)?;
    let statuses: Vec<&str> = report["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["ok", "ok"], "{}", report["hosts"]);
    let outlier = report["outliers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["value"].as_str().unwrap().ends_with(":4444"))
        .unwrap();
    assert_eq!(outlier["hosts"], serde_json::json!(["odd"]));
    // The merged rows carry their host; both hosts listen on 22.
    let on_22: BTreeSet<&str> = report["rows"]["netstat"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["local_port"] == 22 && r["state"] == "LISTEN")
        .map(|r| r["host"].as_str().unwrap())
        .collect();
    assert_eq!(on_22, BTreeSet::from(["odd", "plain"]));
    Ok(())
}

//! Fleet capture of the lab's QEMU guests: an x86-64 and an arm64 guest (or
//! two kernels) captured and analysed from one fleet file next to failing
//! hosts, and Ctrl-C or SIGTERM in the middle of a fleet.

use std::path::{Path, PathBuf};

use crate::fleet::{mshot, read_json, report_host, text};
use crate::lab_guest::{Lab, LoopbackGuest};
use crate::support::{self, KeyPair, KeyType, Need, Sshd, user};

/// Guests' sshd ports (issue 6's range), forwarded on 127.0.0.1 only.
const GUEST_61_PORT: u16 = 2270;
const SECOND_PORT: u16 = 2271;
const INTERRUPT_PORT: u16 = 2272;
/// Small guests keep the captures short; the kernels are the point.
const GUEST_MEM_MIB: u32 = 256;

/// The main lab build, and a second kernel: the arm64 guest when it is
/// built (one fleet file mixing x86-64 and arm64), else the cloud flavour
/// (6.12) beside it or MSHOT_LAB_CLOUD_DIR. Without one, the second guest
/// runs the same kernel.
fn lab_builds() -> (Lab, Lab) {
    let main = std::fs::canonicalize(std::env::var("MSHOT_LAB_DIR").unwrap()).unwrap();
    let second = support::prereq::arm64_lab_dir()
        .ok()
        .or_else(|| std::env::var_os("MSHOT_LAB_CLOUD_DIR").map(PathBuf::from))
        .or_else(|| Some(main.parent()?.join("cloud-amd64")))
        .filter(|d| d.join("lime.ko").is_file() && d.join("vmlinuz").is_file())
        .unwrap_or_else(|| main.clone());
    (Lab { dir: main }, Lab { dir: second })
}

fn sha256_file(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let mut file = std::fs::File::open(path).unwrap();
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).unwrap();
    hex::encode(hasher.finalize())
}

#[test]
fn fleet_captures_two_lab_kernels_beside_failing_hosts() -> anyhow::Result<()> {
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::TestUsers,
        Need::LabDir
    );
    let (lab61, second_lab) = lab_builds();
    // Boot both guests at once: each takes 10-30 s under TCG.
    let (guest61, second_guest) = std::thread::scope(|s| {
        let a = s.spawn(|| LoopbackGuest::start(&lab61, GUEST_61_PORT, GUEST_MEM_MIB));
        let b = s.spawn(|| LoopbackGuest::start(&second_lab, SECOND_PORT, GUEST_MEM_MIB));
        (a.join().unwrap(), b.join().unwrap())
    });
    let (guest61, second_guest) = (guest61?, second_guest?);

    let work = tempfile::tempdir()?;
    let dir = work.path();
    // The 6.1 guest is reached through a named jump chain: a real sshd on loopback.
    let jump = Sshd::builder().start()?;
    let jump_key = KeyPair::generate(dir, "jump", KeyType::Ed25519, None)?;
    jump.authorize(user::NOPW, &jump_key)?;
    let wrong = KeyPair::generate(dir, "wrong", KeyType::Ed25519, None)?;
    let known_hosts = dir.join("known_hosts");
    jump.append_known_hosts(&known_hosts)?;
    std::fs::write(
        &known_hosts,
        format!(
            "{}{}\n{}\n",
            std::fs::read_to_string(&known_hosts)?,
            lab61.known_hosts_line(GUEST_61_PORT),
            second_lab.known_hosts_line(SECOND_PORT)
        ),
    )?;
    let nobody = support::free_port("127.0.0.1".parse()?)?;
    let config = format!(
        r#"workers: 4
output_dir: images
# The capture's profile material is enough: no profile given.
analyze: [pstree, triage]
jump_chains:
  loopback:
    - addr: 127.0.0.1
      port: {jump_port}
      username: {nopw}
      key: {jump_key}
defaults:
  username: root
  known_hosts: {known_hosts}
  agent: false
  connect_timeout: 30
  stream_timeout: 300
hosts:
  - addr: 127.0.0.1
    port: {p61}
    name: kernel-6.1
    key: {key61}
    module: {module61}
    jump: loopback
  - addr: 127.0.0.1
    port: {p2}
    name: second-kernel
    key: {key2}
    module: {module2}
    filename: second.lime
  - addr: 127.0.0.1
    port: {nobody}
    name: unreachable
    key: {key61}
    module: {module61}
  - addr: 127.0.0.1
    port: {p61}
    name: wrong-key
    key: {wrong}
    module: {module61}
"#,
        jump_port = jump.port(),
        nopw = user::NOPW,
        jump_key = jump_key.private.display(),
        known_hosts = known_hosts.display(),
        p61 = GUEST_61_PORT,
        p2 = SECOND_PORT,
        key61 = lab61.key().display(),
        key2 = second_lab.key().display(),
        module61 = lab61.module().display(),
        module2 = second_lab.module().display(),
        wrong = wrong.private.display(),
    );
    let config_path = dir.join("fleet.yaml");
    std::fs::write(&config_path, config)?;
    let logs = dir.join("logs");
    let output = mshot()
        .arg("-c")
        .arg(&config_path)
        .arg("--log-dir")
        .arg(&logs)
        .output()?;
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");

    // The default report lands beside the images.
    let report_path = std::fs::read_dir(dir.join("images"))?
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("mshot-fleet-")
        })
        .expect("a report in output_dir");
    assert!(
        stdout.contains(&report_path.display().to_string()),
        "{stdout}"
    );
    let report = read_json(&report_path);
    assert_eq!(report["summary"]["hosts"], 4);
    assert_eq!(report["summary"]["succeeded"], 2, "{report:#}");

    for (name, lab, guest) in [
        ("kernel-6.1", &lab61, &guest61),
        ("second-kernel", &second_lab, &second_guest),
    ] {
        let host = report_host(&report, name);
        assert_eq!(host["status"], "captured", "{name}: {host:#}");
        let image = PathBuf::from(host["image"].as_str().unwrap());
        assert_eq!(
            std::fs::metadata(&image)?.len(),
            host["bytes"].as_u64().unwrap()
        );
        let sha = sha256_file(&image);
        assert_eq!(host["sha256"], sha.as_str(), "{name}");
        assert_eq!(host["kernel_release"], lab.release().as_str());
        assert_eq!(host["method"], "lime", "{name}");
        let manifest = read_json(Path::new(host["manifest"].as_str().unwrap()));
        let arch = std::fs::read_to_string(lab.dir.join("env"))?
            .lines()
            .find_map(|l| l.strip_prefix("LAB_ARCH="))
            .unwrap_or("x86_64")
            .to_string();
        assert_eq!(manifest["machine"], arch.as_str(), "{name}");
        assert_eq!(host["machine"], arch.as_str(), "{name}");
        assert_eq!(manifest["image"]["sha256"], sha.as_str());
        assert_eq!(manifest["cleanup"]["module_unloaded"], true);
        // The summary line carries the machine and the hash.
        assert!(
            stdout.lines().any(|l| l.starts_with(name)
                && l.split_whitespace().nth(1) == Some(arch.as_str())
                && l.contains(&sha)),
            "{stdout}"
        );
        guest.assert_clean(&known_hosts, &manifest);
        let log = std::fs::read_to_string(logs.join(format!("{name}.log")))?;
        assert!(log.contains("insmod "), "{name}: {log}");
        assert!(log.contains("rmmod lime"), "{name}: {log}");

        // analyze: ran on the image as it landed; the report lists its output.
        let analysis: Vec<PathBuf> = host["analysis"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| PathBuf::from(p.as_str().unwrap()))
            .collect();
        let pstree = image.with_file_name(format!(
            "{}.pstree.json",
            image.file_name().unwrap().to_string_lossy()
        ));
        let triage = image.with_file_name(format!(
            "{}.triage.json",
            image.file_name().unwrap().to_string_lossy()
        ));
        assert_eq!(analysis, [pstree.clone(), triage], "{name}: {host:#}");
        // Clean guests: the verdict says so in the report and the summary.
        assert_eq!(host["findings"], 0, "{name}: {host:#}");
        // (A sleep of the guest's sleeper caught mid-exec may be "not checked".)
        assert!(
            host["verdict"]
                .as_str()
                .unwrap()
                .starts_with("no findings; "),
            "{name}: {host:#}"
        );
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(name) && l.contains("triage: no findings")),
            "{stdout}"
        );
        let rows = read_json(&pstree);
        let rows = rows.as_array().unwrap();
        let task = |pid: i64| {
            rows.iter()
                .find(|r| r["pid"] == pid)
                .map(|r| (r["ppid"].as_i64().unwrap(), r["comm"].as_str().unwrap()))
        };
        // Only long-lived tasks: init and kthreadd exist from boot to shutdown.
        assert_eq!(task(1), Some((0, "init")), "{name}: {rows:?}");
        assert_eq!(task(2), Some((0, "kthreadd")), "{name}: {rows:?}");
        assert!(rows.len() >= 10, "{name}: only {} tasks", rows.len());
    }
    assert!(
        report_host(&report, "second-kernel")["image"]
            .as_str()
            .unwrap()
            .ends_with("/images/second.lime")
    );
    assert_eq!(
        report_host(&report, "kernel-6.1")["jump_hosts"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    for name in ["unreachable", "wrong-key"] {
        let host = report_host(&report, name);
        assert_eq!(host["status"], "failed", "{name}");
        assert!(host["image"].is_null());
    }
    assert!(
        report_host(&report, "wrong-key")["error"]
            .as_str()
            .unwrap()
            .contains("authentication failed")
    );
    // Nothing half-written anywhere.
    for entry in std::fs::read_dir(dir.join("images"))? {
        let path = entry?.path();
        assert!(
            !path.to_string_lossy().ends_with(".part"),
            "{} left behind",
            path.display()
        );
    }
    Ok(())
}

#[test]
fn ctrl_c_stops_the_fleet_and_cleans_every_started_host() -> anyhow::Result<()> {
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::TestUsers,
        Need::LabDir
    );
    let (lab, _) = lab_builds();
    let guest = LoopbackGuest::start(&lab, INTERRUPT_PORT, GUEST_MEM_MIB)?;
    let work = tempfile::tempdir()?;
    let dir = work.path();
    let known_hosts = dir.join("known_hosts");
    std::fs::write(
        &known_hosts,
        format!("{}\n", lab.known_hosts_line(INTERRUPT_PORT)),
    )?;
    // One worker: the second entry waits for the first and must never start.
    let config = format!(
        "workers: 1\noutput_dir: images\ndefaults:\n  username: root\n  key: {key}\n  module: {module}\n  known_hosts: {kh}\n  agent: false\nhosts:\n  - {{addr: 127.0.0.1, port: {port}, name: running, filename: running.lime}}\n  - {{addr: 127.0.0.1, port: {port}, name: queued, filename: queued.lime}}\n",
        key = lab.key().display(),
        module = lab.module().display(),
        kh = known_hosts.display(),
        port = INTERRUPT_PORT,
    );
    let config_path = dir.join("fleet.yaml");
    std::fs::write(&config_path, config)?;
    let report_path = dir.join("report.json");
    let mut child = mshot()
        .arg("-c")
        .arg(&config_path)
        .arg("--report")
        .arg(&report_path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let part = dir.join("images/running.lime.part");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0) < 32 << 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the capture never got going"
        );
        assert!(child.try_wait()?.is_none(), "mshot ended before Ctrl-C");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let output = child.wait_with_output()?;
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");

    let report = read_json(&report_path);
    assert_eq!(report["interrupted"], true);
    let running = report_host(&report, "running");
    assert_eq!(running["status"], "interrupted", "{running:#}");
    let queued = report_host(&report, "queued");
    assert_eq!(queued["status"], "not_started", "{queued:#}");
    assert!(queued["manifest"].is_null());
    assert!(!part.exists(), "the partial image was left behind");
    assert!(!dir.join("images/running.lime").exists());
    let manifest = read_json(Path::new(running["manifest"].as_str().unwrap()));
    assert_eq!(manifest["cleanup"]["module_unloaded"], true, "{manifest:#}");
    assert_eq!(manifest["cleanup"]["temp_dir_removed"], true);
    guest.assert_clean(&known_hosts, &manifest);
    assert!(stdout.contains("interrupted by Ctrl-C"), "{stdout}");
    Ok(())
}

#[test]
fn sigterm_stops_a_fleet_like_ctrl_c() -> anyhow::Result<()> {
    support::require!(Need::Root, Need::Sshd, Need::SshClient, Need::TestUsers);
    // A LiME-format source that sends one header and then stalls, so the
    // first host is mid-stream when the signal comes.
    let source = std::net::TcpListener::bind("127.0.0.1:0")?;
    let source_port = source.local_addr()?.port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in source.incoming().flatten() {
            use std::io::Write;
            let mut stream = stream;
            let mut header = Vec::new();
            header.extend_from_slice(&0x4C69_4D45u32.to_le_bytes());
            header.extend_from_slice(&1u32.to_le_bytes());
            header.extend_from_slice(&0x10_0000u64.to_le_bytes());
            header.extend_from_slice(&0x1f_ffffu64.to_le_bytes());
            header.extend_from_slice(&[0u8; 8]);
            let _ = stream.write_all(&header);
            held.push(stream);
        }
    });
    let sshd = Sshd::builder().start()?;
    let work = tempfile::tempdir()?;
    let dir = work.path();
    let key = KeyPair::generate(dir, "key", KeyType::Ed25519, None)?;
    sshd.authorize(user::NOPW, &key)?;
    let known_hosts = dir.join("known_hosts");
    sshd.append_known_hosts(&known_hosts)?;
    let config = format!(
        "workers: 1\noutput_dir: out\ndefaults: {{username: {u}, key: {k}, known_hosts: {kh}, agent: false, port: {p}}}\nhosts:\n  - {{addr: 127.0.0.1, name: first, filename: first.lime}}\n  - {{addr: 127.0.0.1, name: second, filename: second.lime}}\n",
        u = user::NOPW,
        k = key.private.display(),
        kh = known_hosts.display(),
        p = sshd.port(),
    );
    std::fs::write(dir.join("fleet.yaml"), config)?;
    let report_path = dir.join("report.json");
    let mut child = mshot()
        .arg("-c")
        .arg(dir.join("fleet.yaml"))
        .args(["--bench-source-port", &source_port.to_string()])
        .arg("--report")
        .arg(&report_path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let part = dir.join("out/first.lime.part");
    // Generous: in CI this runs beside QEMU guests that load both cores.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(240);
    while !part.exists() {
        assert!(std::time::Instant::now() < deadline, "never started");
        assert!(child.try_wait()?.is_none(), "mshot ended early");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let output = child.wait_with_output()?;
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("interrupted: cleaning up"), "{stderr}");
    let report = read_json(&report_path);
    assert_eq!(report["interrupted"], true);
    assert_eq!(report_host(&report, "first")["status"], "interrupted");
    assert_eq!(report_host(&report, "second")["status"], "not_started");
    assert!(!part.exists(), "the partial image was left behind");
    assert!(!dir.join("out/second.lime.part").exists());
    Ok(())
}

//! `mshot -c fleet.yaml` with flags that the file also sets, as real
//! captures through a real sshd: where the files land is what counts
//! (`src/commands/fleet/tests.rs` checks every flag against the plan).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{self, KeyPair, KeyType, Need, Sshd, user};

struct Rig {
    sshd: Sshd,
    key: KeyPair,
    known_hosts: PathBuf,
    source_port: u16,
    image: Vec<u8>,
}

impl Rig {
    fn start() -> anyhow::Result<Rig> {
        let sshd = Sshd::builder().start()?;
        let key = KeyPair::generate(sshd.dir(), "client", KeyType::Ed25519, None)?;
        sshd.authorize(user::NOPW, &key)?;
        let known_hosts = sshd.dir().join("mshot_known_hosts");
        sshd.append_known_hosts(&known_hosts)?;
        // A small LiME image, served to every host that asks.
        let mut image = Vec::new();
        image.extend_from_slice(&0x4C69_4D45u32.to_le_bytes());
        image.extend_from_slice(&1u32.to_le_bytes());
        image.extend_from_slice(&0x10_0000u64.to_le_bytes());
        image.extend_from_slice(&(0x10_0000u64 + (1 << 20) - 1).to_le_bytes());
        image.extend_from_slice(&0u64.to_le_bytes());
        image.extend_from_slice(&support::pattern::bytes(1 << 20));
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let source_port = listener.local_addr()?.port();
        let bytes = image.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let bytes = bytes.clone();
                std::thread::spawn(move || {
                    use std::io::Write;
                    let mut stream = stream;
                    let _ = stream.write_all(&bytes);
                });
            }
        });
        Ok(Rig {
            sshd,
            key,
            known_hosts,
            source_port,
            image,
        })
    }

    /// A fleet of two hosts (both this sshd) with `top` at the top.
    fn fleet(&self, dir: &Path, top: &str) -> PathBuf {
        let yaml = format!(
            "{top}\ndefaults: {{username: {u}, key: {k}, known_hosts: {kh}, agent: false, port: {p}}}\nhosts:\n  - {{addr: 127.0.0.1, name: one, filename: one.lime}}\n  - {{addr: 127.0.0.1, name: two, filename: two.lime, output_dir: host-out}}\n",
            u = user::NOPW,
            k = self.key.private.display(),
            kh = self.known_hosts.display(),
            p = self.sshd.port(),
        );
        let path = dir.join("fleet.yaml");
        std::fs::write(&path, yaml).unwrap();
        path
    }

    /// Runs the fleet from `cwd` with `flags`; returns the report.
    fn run(&self, cwd: &Path, file: &Path, flags: &[&str]) -> anyhow::Result<serde_json::Value> {
        let out = Command::new(env!("CARGO_BIN_EXE_mshot"))
            .current_dir(cwd)
            .arg("-c")
            .arg(file)
            .args(["--bench-source-port", &self.source_port.to_string()])
            .args(flags)
            .env_remove("SSH_AUTH_SOCK")
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
        let report = stdout
            .lines()
            .find_map(|l| l.strip_prefix("report   "))
            .unwrap_or_else(|| panic!("no report line:\n{stdout}"));
        Ok(serde_json::from_slice(&std::fs::read(cwd.join(report))?)?)
    }
}

fn report_file(report: &serde_json::Value, host: &str) -> PathBuf {
    let entry = report["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == host)
        .unwrap();
    PathBuf::from(entry["image"].as_str().unwrap())
}

/// Names of the files directly in `dir` (none when it does not exist).
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The bug: `mshot -c fleet.yaml --output-dir DIR` wrote the images and the
/// report into the current directory. Real captures, three ways.
#[test]
fn output_dir_log_dir_and_workers_flags_win_over_the_fleet_file() -> anyhow::Result<()> {
    support::require!(Need::Root, Need::Sshd, Need::SshClient, Need::TestUsers);
    let rig = Rig::start()?;
    let work = tempfile::tempdir()?;
    let want = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&rig.image));
    let sha = |path: &Path| {
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
            std::fs::read(path).unwrap(),
        ))
    };

    // Flag alone: the file sets neither; the images, manifests and report go
    // to --output-dir, logs to --log-dir; nothing into the current directory.
    let cwd = work.path().join("flag-alone");
    std::fs::create_dir(&cwd)?;
    let file = rig.fleet(&cwd, "");
    let out = work.path().join("flag-out");
    let logs = work.path().join("flag-logs");
    let flags = [
        "--output-dir",
        out.to_str().unwrap(),
        "--log-dir",
        logs.to_str().unwrap(),
        "--workers",
        "1",
    ];
    let report = rig.run(&cwd, &file, &flags)?;
    assert_eq!(report["workers"], 1, "{report:#}");
    for host in ["one", "two"] {
        let image = report_file(&report, host);
        assert_eq!(image, out.join(format!("{host}.lime")), "{report:#}");
        assert_eq!(sha(&image), want);
        assert!(out.join(format!("{host}.json")).is_file());
    }
    assert!(names(&out).iter().any(|n| n.starts_with("mshot-fleet-")));
    assert_eq!(
        names(&cwd),
        ["fleet.yaml"],
        "the current directory got files"
    );
    assert!(
        names(&logs).contains(&"one.log".to_string()),
        "{:?}",
        names(&logs)
    );

    // File alone: output_dir (top), a host's own output_dir, logging.dir, workers.
    let cwd = work.path().join("file-alone");
    std::fs::create_dir(&cwd)?;
    let file = rig.fleet(
        &cwd,
        "output_dir: file-out\nworkers: 2\nlogging: {dir: file-logs}",
    );
    let report = rig.run(&cwd, &file, &[])?;
    assert_eq!(report["workers"], 2, "{report:#}");
    assert_eq!(report_file(&report, "one"), cwd.join("file-out/one.lime"));
    assert_eq!(report_file(&report, "two"), cwd.join("host-out/two.lime"));
    assert!(
        names(&cwd.join("file-out"))
            .iter()
            .any(|n| n.starts_with("mshot-fleet-"))
    );
    assert!(names(&cwd.join("file-logs")).contains(&"two.log".to_string()));

    // Both: the flags win over the top, the host and logging.dir.
    let cwd = work.path().join("both");
    std::fs::create_dir(&cwd)?;
    let file = rig.fleet(
        &cwd,
        "output_dir: file-out\nworkers: 2\nlogging: {dir: file-logs}",
    );
    let out = work.path().join("both-out");
    let logs = work.path().join("both-logs");
    let flags = [
        "--output-dir",
        out.to_str().unwrap(),
        "--log-dir",
        logs.to_str().unwrap(),
        "--workers",
        "1",
    ];
    let report = rig.run(&cwd, &file, &flags)?;
    assert_eq!(report["workers"], 1, "{report:#}");
    for host in ["one", "two"] {
        assert_eq!(report_file(&report, host), out.join(format!("{host}.lime")));
        assert_eq!(sha(&out.join(format!("{host}.lime"))), want);
    }
    assert!(names(&out).iter().any(|n| n.starts_with("mshot-fleet-")));
    assert_eq!(
        names(&cwd),
        ["fleet.yaml"],
        "the file's directories were used"
    );
    assert!(names(&logs).contains(&"two.log".to_string()));
    Ok(())
}

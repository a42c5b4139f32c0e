//! Flags given with `mshot -c FILE` against the same settings in the file:
//! for every flag a fleet file can also set, the flag alone, the file alone,
//! and both (the flag wins, over the file's top level, `defaults:` and the
//! host). The plan is built through mshot's own flag parsing and fleet
//! loader; `--output-dir`, `--log-dir` and `--workers` also run real
//! captures through a real sshd, where the files land is what counts.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use mshot::capture::ModuleSource;
use mshot::fleet::config::FleetPlan;
use mshot::repository::Location;

use crate::support::{self, KeyPair, KeyType, Need, Sshd, user};

/// Loads `yaml` (written to `dir/fleet.yaml`) as `mshot -c` would with `flags`.
fn plan(dir: &Path, yaml: &str, flags: &[&str]) -> Result<FleetPlan, String> {
    let file = dir.join("fleet.yaml");
    std::fs::write(&file, yaml).unwrap();
    let mut argv = vec!["mshot".to_string(), "-c".into(), file.display().to_string()];
    argv.extend(flags.iter().map(|f| f.to_string()));
    let cli = mshot::cli::Cli::try_parse_from(&argv).map_err(|e| e.to_string())?;
    let overrides = mshot::fleet::flags::overrides(&cli.capture);
    let mut plan = mshot::fleet::config::load(&file, &overrides).map_err(|e| e.to_string())?;
    mshot::fleet::flags::apply(&mut plan, &cli.capture);
    Ok(plan)
}

/// One setting: the file's lines (`TOP` at the top, `HOST` in the host's
/// mapping, `DEFAULTS` in `defaults:`), the flags, and what each gives.
struct Case {
    name: &'static str,
    top: &'static str,
    host: &'static str,
    flags: &'static [&'static str],
    /// The file's value of the setting, when the flags set the same in
    /// another way; `None` reuses `top`/`host`.
    both_top: Option<&'static str>,
    both_host: Option<&'static str>,
    read: fn(&FleetPlan) -> String,
    file_gives: &'static str,
    flag_gives: &'static str,
}

fn yaml(top: &str, host: &str) -> String {
    let host = if host.is_empty() {
        String::new()
    } else {
        format!(", {host}")
    };
    // No module: method auto takes /proc/kcore, so nothing is read at load.
    format!(
        "{top}\ndefaults: {{username: {u}}}\nhosts:\n  - {{addr: 127.0.0.1, name: a{host}}}\n  - {{addr: 127.0.0.2, name: b}}\n",
        u = user::NOPW
    )
}

fn job(plan: &FleetPlan) -> &mshot::capture::CaptureJob {
    &plan.hosts[0].job
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "--output-dir / output_dir",
            top: "output_dir: /srv/file-top",
            host: "output_dir: /srv/file-host",
            flags: &["--output-dir", "/srv/flag"],
            both_top: None,
            both_host: None,
            read: |p| {
                format!(
                    "{} {} {}",
                    job(p).image_path.parent().unwrap().display(),
                    p.hosts[1].job.image_path.parent().unwrap().display(),
                    p.output_dir.display()
                )
            },
            file_gives: "/srv/file-host /srv/file-top /srv/file-top",
            flag_gives: "/srv/flag /srv/flag /srv/flag",
        },
        Case {
            name: "--known-hosts / known_hosts",
            top: "",
            host: "known_hosts: /srv/file_known_hosts",
            flags: &["--known-hosts", "/srv/flag_known_hosts"],
            both_top: None,
            both_host: None,
            read: |p| job(p).host_keys.known_hosts.display().to_string(),
            file_gives: "/srv/file_known_hosts",
            flag_gives: "/srv/flag_known_hosts",
        },
        Case {
            name: "--no-agent / agent",
            top: "",
            host: "agent: false",
            flags: &["--no-agent"],
            both_top: None,
            both_host: Some("agent: true"),
            read: |p| {
                job(p)
                    .route
                    .last()
                    .unwrap()
                    .credentials
                    .use_agent
                    .to_string()
            },
            file_gives: "false",
            flag_gives: "false",
        },
        Case {
            name: "--connect-timeout / connect_timeout",
            top: "",
            host: "connect_timeout: 7",
            flags: &["--connect-timeout", "9"],
            both_top: None,
            both_host: None,
            read: |p| job(p).ssh.connect_timeout.as_secs().to_string(),
            file_gives: "7",
            flag_gives: "9",
        },
        Case {
            name: "--stream-timeout / stream_timeout",
            top: "",
            host: "stream_timeout: 70",
            flags: &["--stream-timeout", "90"],
            both_top: None,
            both_host: None,
            read: |p| job(p).stream_idle_timeout.as_secs().to_string(),
            file_gives: "70",
            flag_gives: "90",
        },
        Case {
            name: "--method / method",
            top: "",
            host: "method: kcore",
            flags: &["--method", "auto"],
            both_top: None,
            both_host: None,
            read: |p| format!("{:?}", job(p).source.method),
            file_gives: "Kcore",
            flag_gives: "Auto",
        },
        Case {
            name: "--compress / compress",
            top: "",
            host: "compress: true",
            flags: &["--compress"],
            both_top: None,
            both_host: Some("compress: false"),
            read: |p| job(p).source.compress.to_string(),
            file_gives: "true",
            flag_gives: "true",
        },
        Case {
            name: "--store-compressed / store_compressed",
            top: "",
            host: "compress: true, store_compressed: true",
            flags: &["--compress", "--store-compressed"],
            both_top: None,
            both_host: Some("compress: true, store_compressed: false"),
            read: |p| job(p).source.store_compressed.to_string(),
            file_gives: "true",
            flag_gives: "true",
        },
        Case {
            name: "--no-digest / digest",
            top: "",
            host: "digest: false",
            flags: &["--no-digest"],
            both_top: None,
            both_host: Some("digest: true"),
            read: |p| job(p).source.digest.to_string(),
            file_gives: "false",
            flag_gives: "false",
        },
        Case {
            name: "--accept-new-host-keys / accept_new_host_keys",
            top: "",
            host: "accept_new_host_keys: true",
            flags: &["--accept-new-host-keys"],
            both_top: None,
            both_host: Some("accept_new_host_keys: false"),
            read: |p| job(p).host_keys.accept_new.to_string(),
            file_gives: "true",
            flag_gives: "true",
        },
        Case {
            name: "--force / force",
            top: "",
            host: "force: true",
            flags: &["--force"],
            both_top: None,
            both_host: Some("force: false"),
            read: |p| job(p).force.to_string(),
            file_gives: "true",
            flag_gives: "true",
        },
        Case {
            name: "--bucket and the S3 flags / bucket",
            top: "bucket: {name: file-bucket, prefix: file/p, concurrency: 2}",
            host: "bucket: {name: host-bucket}",
            flags: &[
                "--bucket",
                "flag-bucket",
                "--prefix",
                "flag/p",
                "--endpoint-url",
                "http://127.0.0.1:9",
                "--s3-concurrency",
                "3",
            ],
            both_top: None,
            both_host: None,
            read: |p| {
                let s3 = |i: usize| {
                    let job = &p.hosts[i].job;
                    let s3 = job.s3.as_ref().unwrap();
                    format!(
                        "{}:{}:{}:{}",
                        s3.bucket, s3.prefix, s3.concurrency, job.local_image
                    )
                };
                format!("{} {}", s3(0), s3(1))
            },
            file_gives: "host-bucket::4:false file-bucket:file/p:2:false",
            flag_gives: "flag-bucket:flag/p:3:false flag-bucket:flag/p:3:false",
        },
        Case {
            name: "--repository-url / repository.url",
            top: "repository: {enabled: true, url: /srv/file-repo}",
            host: "",
            flags: &["--repository-url", "/srv/flag-repo"],
            both_top: None,
            both_host: None,
            read: |p| match &job(p).module {
                ModuleSource::Repository(spec) => match &spec.location {
                    Location::Dir(dir) => dir.display().to_string(),
                    Location::Http(url) => url.to_string(),
                },
                ModuleSource::File(_) => "file".into(),
            },
            file_gives: "/srv/file-repo",
            flag_gives: "/srv/flag-repo",
        },
        Case {
            name: "--workers / workers",
            top: "workers: 1",
            host: "",
            flags: &["--workers", "2"],
            both_top: None,
            both_host: None,
            read: |p| format!("{:?}", p.workers),
            file_gives: "Some(Count(1))",
            flag_gives: "Some(Count(2))",
        },
        Case {
            name: "--log-dir / logging.dir",
            top: "logging: {dir: /srv/file-logs}",
            host: "",
            flags: &["--log-dir", "/srv/flag-logs"],
            both_top: None,
            both_host: None,
            read: |p| format!("{:?}", p.log_dir),
            file_gives: "Some(\"/srv/file-logs\")",
            flag_gives: "Some(\"/srv/flag-logs\")",
        },
        Case {
            name: "--analyze / analyze",
            top: "output_dir: /srv/out\nanalyze: [pstree]",
            host: "",
            flags: &["--output-dir", "/srv/out", "--analyze", "pslist,netstat"],
            both_top: None,
            both_host: None,
            read: |p| format!("{:?}", p.analyze.as_ref().map(|a| &a.plugins)),
            file_gives: "Some([\"pstree\"])",
            flag_gives: "Some([\"pslist\", \"netstat\"])",
        },
    ]
}

/// Every setting: flag alone, file alone, both (the flag wins).
#[test]
fn every_flag_a_fleet_file_can_also_set_wins_over_the_file() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let mut checked = 0;
    for case in cases() {
        let name = case.name;
        let file = plan(dir, &yaml(case.top, case.host), &[]).unwrap();
        assert_eq!((case.read)(&file), case.file_gives, "{name}: file alone");
        let flag = plan(dir, &yaml("", ""), case.flags).unwrap();
        assert_eq!((case.read)(&flag), case.flag_gives, "{name}: flag alone");
        let both_yaml = yaml(
            case.both_top.unwrap_or(case.top),
            case.both_host.unwrap_or(case.host),
        );
        let both = plan(dir, &both_yaml, case.flags).unwrap();
        assert_eq!((case.read)(&both), case.flag_gives, "{name}: both");
        checked += 1;
    }
    assert_eq!(checked, 16);
}

/// `--profile` with the file's `analyze:` replaces only the profile; a
/// relative `--output-dir` is the current directory's, not the file's.
#[test]
fn profile_flag_and_relative_output_dir() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let file_profile = dir.join("file.json");
    let flag_profile = dir.join("flag.json");
    std::fs::write(&file_profile, "{}").unwrap();
    let top = format!(
        "output_dir: out\nanalyze: {{plugins: [pstree], profile: {}}}",
        file_profile.display()
    );
    let both = plan(
        dir,
        &yaml(&top, ""),
        &["--profile", &flag_profile.display().to_string()],
    )
    .unwrap();
    let analyze = both.analyze.unwrap();
    assert_eq!(analyze.plugins, ["pstree"]);
    assert_eq!(analyze.profile, Some(flag_profile));
    // The file's relative output_dir is beside the file.
    let file = plan(dir, &yaml("output_dir: out", ""), &[]).unwrap();
    assert_eq!(file.output_dir, dir.join("out"));
    let flag = plan(dir, &yaml("output_dir: out", ""), &["--output-dir", "rel"]).unwrap();
    assert_eq!(
        flag.output_dir,
        std::env::current_dir().unwrap().join("rel")
    );
}

/// Flags that name one host's connection are refused with `-c`.
#[test]
fn per_host_connection_flags_are_refused_with_a_fleet_file() {
    let work = tempfile::tempdir().unwrap();
    for flags in [
        &["--port", "2222"][..],
        &["--user", "root"],
        &["--jump-username", "ops"],
        &["--jump-key", "/k"],
        &["--jump-port", "2200"],
        &["--filename", "x.lime"],
        &["--server", "h"],
    ] {
        let e = plan(work.path(), &yaml("", ""), flags).err().unwrap();
        assert!(e.contains("cannot be used with"), "{flags:?}: {e}");
    }
    // The defaults of --port and --connect-timeout are not "given".
    assert!(plan(work.path(), &yaml("", ""), &[]).is_ok());
}

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

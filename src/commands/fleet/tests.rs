//! Flags given with `mshot -c FILE` against the same settings in the file:
//! for every flag a fleet file can also set, the flag alone, the file alone,
//! and both (the flag wins, over the file's top level, `defaults:` and the
//! host). The plan is built through mshot's own flag parsing and fleet
//! loader; `tests/integration/fleet_flags.rs` runs real captures.

use std::path::Path;

use crate::capture::ModuleSource;
use crate::fleet::config::FleetPlan;
use crate::repository::Location;
use clap::Parser;

/// Loads `yaml` (written to `dir/fleet.yaml`) as `mshot -c` would with `flags`.
fn plan(dir: &Path, yaml: &str, flags: &[&str]) -> Result<FleetPlan, String> {
    let file = dir.join("fleet.yaml");
    std::fs::write(&file, yaml).unwrap();
    let mut argv = vec!["mshot".to_string(), "-c".into(), file.display().to_string()];
    argv.extend(flags.iter().map(|f| f.to_string()));
    let cli = crate::cli::Cli::try_parse_from(&argv).map_err(|e| e.to_string())?;
    let overrides = super::flags::overrides(&cli.capture);
    let mut plan = crate::fleet::config::load(&file, &overrides).map_err(|e| e.to_string())?;
    super::flags::apply(&mut plan, &cli.capture);
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
        u = "mshot-nopw"
    )
}

fn job(plan: &FleetPlan) -> &crate::capture::CaptureJob {
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
            name: "--digest / digest",
            top: "",
            host: "digest: true",
            flags: &["--digest"],
            both_top: None,
            both_host: Some("digest: false"),
            read: |p| job(p).source.digest.to_string(),
            file_gives: "true",
            flag_gives: "true",
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

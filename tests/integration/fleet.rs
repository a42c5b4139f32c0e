//! Fleet capture (`mshot -c`): a corpus of broken fleet files, each with its
//! own located error; a fleet of real sshds (good hosts, a wrong key, an
//! unreachable host, refused sudo) in dry-run mode. The lab guests' fleet
//! tests are in lab_fleet.rs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{self, KeyPair, KeyType, Need, Sshd, user};

pub(crate) fn mshot() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mshot"));
    for var in [
        "MSHOT_PASSWORD",
        "MSHOT_SUDO_PASSWORD",
        "MSHOT_KEY_PASSPHRASE",
        "MSHOT_JUMP_PASSWORD",
        "SSH_AUTH_SOCK",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

pub(crate) fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Each broken file and the `LINE:COLUMN: message` lines it must produce.
const CORPUS: &[(&str, &[&str])] = &[
    (
        "unknown-top-key.yaml",
        &["2:1: unknown key `worker` in the fleet file; did you mean `workers`?"],
    ),
    (
        "unknown-host-key.yaml",
        &["4:5: unknown key `usernme` in a host; did you mean `username`?"],
    ),
    (
        "port-wrong-type.yaml",
        &["3:11: port must be an integer, found a string"],
    ),
    (
        "port-out-of-range.yaml",
        &["3:9: port must be between 1 and 65535, found 70000"],
    ),
    ("missing-addr.yaml", &["4:5: a host needs addr:"]),
    ("missing-hosts.yaml", &["1:1: missing `hosts:`"]),
    (
        "hosts-not-a-list.yaml",
        &["2:3: hosts must be a list, found a mapping"],
    ),
    ("unreadable-key.yaml", &["5:10: cannot read key file"]),
    ("unreadable-module.yaml", &["3:13: cannot read module"]),
    (
        "inline-password.yaml",
        &["5:15: password written in the file; use password_env"],
    ),
    (
        "unset-secret-variable.yaml",
        &["4:19: password_env: environment variable MSHOT_TEST_SURELY_UNSET_VARIABLE is not set"],
    ),
    (
        "unknown-jump-chain.yaml",
        &["6:11: no jump chain named dnz (jump_chains defines: dmz)"],
    ),
    (
        "duplicate-names.yaml",
        &["5:5: a second host named a (the first is at line 3)"],
    ),
    ("syntax-error.yaml", &["4:9: "]),
    ("duplicate-key.yaml", &["4:5: duplicate mapping key: addr"]),
    (
        "workers-not-a-number.yaml",
        &["1:10: workers (a number or auto) must be an integer, found a string"],
    ),
    (
        "bad-bucket.yaml",
        &[
            "3:9: bucket: bucket must be a plain bucket name, without s3:// or a slash",
            "4:18: bucket.part_size_mib must be between 8 and 5120, found 4",
            "7:5: analyze: needs the image on disk but this host only uploads to the bucket",
            "9:30: unknown key `concurrenc` in bucket; did you mean `concurrency`?",
            "10:5: analyze: needs the image on disk but this host only uploads to the bucket",
        ],
    ),
    (
        "filename-is-a-path.yaml",
        &["4:15: filename must be a plain file name, not a path"],
    ),
    ("unknown-plugin.yaml", &["1:19: unknown plugin pslistt"]),
    (
        "per-host-key-in-defaults.yaml",
        &["2:3: `addr` is per host; it cannot be in defaults"],
    ),
    (
        "bad-jump-hop.yaml",
        &[
            "6:7: unknown key `prot` in a hop of jump_host; did you mean `port`?",
            "8:12: bad hop \"ops@bastion:notaport\"",
        ],
    ),
    (
        "bad-method.yaml",
        &[
            "2:11: method must be auto, lime or kcore, found \"dd\"",
            "4:5: a: method lime needs module:",
            "7:23: store_compressed needs compress: true",
        ],
    ),
    (
        "bad-sudo.yaml",
        &[
            "2:9: sudo must be auto, never or always (or true for always, false for never), found \"sometimes\"",
            "7:11: sudo must be auto, never or always (or true for always, false for never), found an integer",
        ],
    ),
    (
        "many-problems.yaml",
        &[
            "1:10: workers (a number or auto) must be between 1 and 1024, found 0",
            "4:10: agent must be true or false, found a string",
            "7:10: cannot read key file",
            "9:11: port must be an integer, found the string \"22\"; write it without quotes",
            "10:5: unknown key `colour` in a host",
        ],
    ),
];

#[test]
fn every_broken_fleet_file_gives_its_own_located_errors() {
    let dir = repo().join("tests/fleet-configs");
    let mut seen = 0;
    for (file, expected) in CORPUS {
        let path = dir.join(file);
        let output = mshot()
            .arg("-c")
            .arg(&path)
            .env_remove("MSHOT_TEST_SURELY_UNSET_VARIABLE")
            .output()
            .unwrap();
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{file}: {stderr}");
        assert!(output.stdout.is_empty(), "{file}: {}", text(&output.stdout));
        let located: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with(&path.display().to_string()))
            .collect();
        assert_eq!(
            located.len(),
            expected.len(),
            "{file}: expected {} located error(s):\n{stderr}",
            expected.len()
        );
        for want in *expected {
            let prefix = format!("{}:{want}", path.display());
            assert!(
                located.iter().any(|l| l.starts_with(&prefix)),
                "{file}: no line starting {prefix:?} in:\n{stderr}"
            );
        }
        assert!(stderr.contains("nothing was started"), "{file}: {stderr}");
        seen += 1;
    }
    // Every file in the corpus is covered by the table.
    let files = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "yaml")
        })
        .count();
    assert_eq!(
        files, seen,
        "a file in tests/fleet-configs has no expectation"
    );
}

/// Passes mshot's module checks for this machine's kernel; dry runs push it
/// and check its hash on the target, never load it.
fn dry_run_module(dir: &Path) -> PathBuf {
    let release = text(&Command::new("uname").arg("-r").output().unwrap().stdout);
    let mut bytes = vec![0u8; 64];
    bytes[..4].copy_from_slice(b"\x7fELF");
    bytes[18..20].copy_from_slice(&62u16.to_le_bytes());
    bytes.extend_from_slice(format!("\0vermagic={} SMP mod_unload \0", release.trim()).as_bytes());
    bytes.extend((0..50_000u32).map(|i| (i % 251) as u8));
    let path = dir.join("dry-run.ko");
    std::fs::write(&path, bytes).unwrap();
    path
}

pub(crate) fn report_host<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in the report: {report:#}"))
}

pub(crate) fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn dry_run_fleet_of_real_sshds_reports_every_host() -> anyhow::Result<()> {
    support::require!(Need::Root, Need::Sshd, Need::SshClient, Need::TestUsers);
    let keys_sshd = Sshd::builder().start()?;
    let second = Sshd::builder().start()?;
    let pw_sshd = Sshd::builder().password_auth(true).start()?;
    let work = tempfile::tempdir()?;
    let dir = work.path();
    let good = KeyPair::generate(dir, "good", KeyType::Ed25519, None)?;
    let wrong = KeyPair::generate(dir, "wrong", KeyType::Ed25519, None)?;
    keys_sshd.authorize(user::NOPW, &good)?;
    second.authorize(user::NOPW, &good)?;
    let known_hosts = dir.join("known_hosts");
    for sshd in [&keys_sshd, &second, &pw_sshd] {
        sshd.append_known_hosts(&known_hosts)?;
    }
    let module = dry_run_module(dir);
    let nobody = support::free_port("127.0.0.1".parse()?)?;
    let config = format!(
        r#"# A fleet of real sshds on loopback.
workers: 3
output_dir: out
defaults:
  module: {module}
  known_hosts: {known_hosts}
  key: {good}
  username: {nopw}
  agent: false
  connect_timeout: 10
hosts:
  - addr: 127.0.0.1
    port: {p1}
    name: good-1
  - addr: 127.0.0.1
    port: {p2}
    name: good-2
  - addr: 127.0.0.1
    port: {p1}
    name: wrong-key
    key: {wrong}
  - addr: 127.0.0.1
    port: {nobody}
    name: unreachable
  - addr: 127.0.0.1
    port: {p3}
    name: password-sudo
    username: {pw}
    password_env: FLEET_PW_PASSWORD
  - addr: 127.0.0.1
    port: {p3}
    name: no-sudo
    username: {nosudo}
    password_env: FLEET_NOSUDO_PASSWORD
"#,
        module = module.display(),
        known_hosts = known_hosts.display(),
        good = good.private.display(),
        wrong = wrong.private.display(),
        nopw = user::NOPW,
        pw = user::PW,
        nosudo = user::NOSUDO,
        p1 = keys_sshd.port(),
        p2 = second.port(),
        p3 = pw_sshd.port(),
    );
    let config_path = dir.join("fleet.yaml");
    std::fs::write(&config_path, config)?;
    let report_path = dir.join("report.json");
    let logs = dir.join("logs");
    let output: Output = mshot()
        .arg("-c")
        .arg(&config_path)
        .arg("--dry-run")
        .arg("--report")
        .arg(&report_path)
        .arg("--log-dir")
        .arg(&logs)
        .env("FLEET_PW_PASSWORD", user::PW_PASSWORD)
        .env("FLEET_NOSUDO_PASSWORD", user::NOSUDO_PASSWORD)
        .output()?;
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");

    let report = read_json(&report_path);
    assert_eq!(report["summary"]["hosts"], 6, "{report:#}");
    assert_eq!(report["summary"]["succeeded"], 3, "{report:#}");
    assert_eq!(report["workers"], 3);
    assert_eq!(report["interrupted"], false);
    for name in ["good-1", "good-2", "password-sudo"] {
        let host = report_host(&report, name);
        assert_eq!(host["status"], "dry_run_ok", "{name}: {host:#}");
        assert!(host["error"].is_null());
        // The target (this machine) is clean: the module's temp dir is gone.
        let manifest = read_json(Path::new(host["manifest"].as_str().unwrap()));
        let remote = manifest["module"]["remote_path"].as_str().unwrap();
        assert!(remote.starts_with("/tmp/mshot."), "{remote}");
        assert!(!Path::new(remote).parent().unwrap().exists());
        assert_eq!(manifest["cleanup"]["temp_dir_removed"], true);
        assert!(host["manifest"].as_str().unwrap().contains("/out/"));
    }
    assert_eq!(
        read_json(Path::new(
            report_host(&report, "password-sudo")["manifest"]
                .as_str()
                .unwrap()
        ))["privilege"],
        "sudo_password"
    );
    let failure = |name: &str| {
        let host = report_host(&report, name);
        assert_eq!(host["status"], "failed", "{name}: {host:#}");
        host["error"].as_str().unwrap().to_string()
    };
    let wrong_key = failure("wrong-key");
    assert!(wrong_key.contains("auth"), "{wrong_key}");
    let unreachable = failure("unreachable");
    assert!(
        unreachable.contains("refused") || unreachable.contains("connect"),
        "{unreachable}"
    );
    let no_sudo = failure("no-sudo");
    assert!(no_sudo.contains("sudo refused"), "{no_sudo}");

    // The summary table names every host with its result.
    for (name, word) in [
        ("good-1", "dry run ok"),
        ("wrong-key", "FAILED"),
        ("unreachable", "FAILED"),
        ("no-sudo", "FAILED"),
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(name) && l.contains(word)),
            "{name} {word}:\n{stdout}"
        );
    }
    assert!(stdout.contains("3 of 6 hosts succeeded"), "{stdout}");

    // Per-host logs carry phases and the audit; no secret anywhere.
    let good_log = std::fs::read_to_string(logs.join("good-1.log"))?;
    assert!(good_log.contains("connecting"), "{good_log}");
    assert!(good_log.contains("audit of remote commands"), "{good_log}");
    assert!(good_log.contains("sha256sum"), "{good_log}");
    let sudo_log = std::fs::read_to_string(logs.join("password-sudo.log"))?;
    assert!(sudo_log.contains("sudo password (redacted)"), "{sudo_log}");
    let everything = format!(
        "{stdout}{stderr}{}{}",
        std::fs::read_to_string(&report_path)?,
        sudo_log
    );
    assert!(!everything.contains(user::PW_PASSWORD));
    assert!(!everything.contains(user::NOSUDO_PASSWORD));

    // --hosts keeps only the named hosts; all good means exit 0.
    let only = mshot()
        .arg("-c")
        .arg(&config_path)
        .args(["--dry-run", "--hosts", "good-1,good-2", "--report"])
        .arg(dir.join("only.json"))
        .env("FLEET_PW_PASSWORD", user::PW_PASSWORD)
        .env("FLEET_NOSUDO_PASSWORD", user::NOSUDO_PASSWORD)
        .output()?;
    assert_eq!(only.status.code(), Some(0), "{}", text(&only.stderr));
    let only_report = read_json(&dir.join("only.json"));
    assert_eq!(only_report["summary"]["hosts"], 2);
    assert_eq!(only_report["summary"]["succeeded"], 2);

    // --shard 2/3 takes hosts 2 and 5 of the file (good-2 and password-sudo).
    let shard = mshot()
        .arg("-c")
        .arg(&config_path)
        .args(["--dry-run", "--shard", "2/3", "--report"])
        .arg(dir.join("shard.json"))
        .env("FLEET_PW_PASSWORD", user::PW_PASSWORD)
        .env("FLEET_NOSUDO_PASSWORD", user::NOSUDO_PASSWORD)
        .output()?;
    assert_eq!(shard.status.code(), Some(0), "{}", text(&shard.stderr));
    let names: Vec<String> = read_json(&dir.join("shard.json"))["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["good-2", "password-sudo"]);

    // A name --hosts does not know is a usage error before anything connects.
    let unknown = mshot()
        .arg("-c")
        .arg(&config_path)
        .args(["--dry-run", "--hosts", "good-3"])
        .env("FLEET_PW_PASSWORD", user::PW_PASSWORD)
        .env("FLEET_NOSUDO_PASSWORD", user::NOSUDO_PASSWORD)
        .output()?;
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        text(&unknown.stderr).contains("--hosts names good-3, which is not in the file"),
        "{}",
        text(&unknown.stderr)
    );
    Ok(())
}

/// Secrets by reference and `sudo:` against one real sshd: an encrypted key
/// unlocked from `key_passphrase_env`, sudo's password from
/// `sudo_password_env` (right and wrong), root logins under `sudo: never` and
/// `always`, a user refused under `never`; then the same file with the
/// variables unset or the passphrase wrong, refused before anything connects.
/// No secret may appear in the output, report, logs or manifests.
#[test]
fn fleet_secrets_from_variables_and_sudo_modes() -> anyhow::Result<()> {
    support::require!(Need::Root, Need::Sshd, Need::SshClient, Need::TestUsers);
    const PASSPHRASE: &str = "fleet-key-passphrase-9c1e";
    const WRONG_SUDO: &str = "fleet-wrong-sudo-7d2f";
    const WRONG_PASSPHRASE: &str = "fleet-wrong-passphrase-4b8a";
    let sshd = Sshd::builder().start()?;
    let work = tempfile::tempdir()?;
    let dir = work.path();
    let encrypted = KeyPair::generate(dir, "encrypted", KeyType::Ed25519, Some(PASSPHRASE))?;
    let plain = KeyPair::generate(dir, "plain", KeyType::Ed25519, None)?;
    sshd.authorize(user::PW, &encrypted)?;
    sshd.authorize(user::NOPW, &plain)?;
    sshd.authorize("root", &plain)?;
    let known_hosts = dir.join("known_hosts");
    sshd.append_known_hosts(&known_hosts)?;
    let module = dry_run_module(dir);
    let config = format!(
        r#"workers: 2
output_dir: out
defaults:
  port: {port}
  module: {module}
  known_hosts: {known_hosts}
  agent: false
  connect_timeout: 30
hosts:
  - name: encrypted-key
    addr: 127.0.0.1
    username: {pw}
    key: {encrypted}
    key_passphrase_env: FLEET_KEY_PASSPHRASE
    sudo_password_env: FLEET_SUDO_PASSWORD
  - name: wrong-sudo-password
    addr: 127.0.0.1
    username: {pw}
    key: {encrypted}
    key_passphrase_env: FLEET_KEY_PASSPHRASE
    sudo_password_env: FLEET_WRONG_SUDO_PASSWORD
  - name: root-never
    addr: 127.0.0.1
    username: root
    key: {plain}
    sudo: never
  - name: root-always
    addr: 127.0.0.1
    username: root
    key: {plain}
    sudo: always
  - name: user-never
    addr: 127.0.0.1
    username: {nopw}
    key: {plain}
    sudo: false
"#,
        port = sshd.port(),
        module = module.display(),
        known_hosts = known_hosts.display(),
        pw = user::PW,
        nopw = user::NOPW,
        encrypted = encrypted.private.display(),
        plain = plain.private.display(),
    );
    let config_path = dir.join("fleet.yaml");
    std::fs::write(&config_path, &config)?;
    let report_path = dir.join("report.json");
    let logs = dir.join("logs");
    let output = mshot()
        .arg("-c")
        .arg(&config_path)
        .arg("--dry-run")
        .arg("--report")
        .arg(&report_path)
        .arg("--log-dir")
        .arg(&logs)
        .env("FLEET_KEY_PASSPHRASE", PASSPHRASE)
        .env("FLEET_SUDO_PASSWORD", user::PW_PASSWORD)
        .env("FLEET_WRONG_SUDO_PASSWORD", WRONG_SUDO)
        .output()?;
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    let report = read_json(&report_path);
    assert_eq!(report["summary"]["succeeded"], 3, "{report:#}");

    let mut written = format!("{stdout}{stderr}{}", std::fs::read_to_string(&report_path)?);
    for (name, privilege) in [
        ("encrypted-key", "sudo_password"),
        ("root-never", "root"),
        ("root-always", "sudo_no_password"),
    ] {
        let host = report_host(&report, name);
        assert_eq!(host["status"], "dry_run_ok", "{name}: {host:#}");
        let manifest_path = PathBuf::from(host["manifest"].as_str().unwrap());
        let manifest = read_json(&manifest_path);
        assert_eq!(manifest["privilege"], privilege, "{name}: {manifest:#}");
        assert_eq!(manifest["cleanup"]["temp_dir_removed"], true, "{name}");
        written.push_str(&std::fs::read_to_string(&manifest_path)?);
    }
    let failure = |name: &str| {
        let host = report_host(&report, name);
        assert_eq!(host["status"], "failed", "{name}: {host:#}");
        assert!(host["image"].is_null(), "{name}");
        host["error"].as_str().unwrap().to_string()
    };
    let wrong_sudo = failure("wrong-sudo-password");
    assert!(
        wrong_sudo
            .contains("sudo refused the password from sudo_password_env FLEET_WRONG_SUDO_PASSWORD"),
        "{wrong_sudo}"
    );
    let never = failure("user-never");
    assert!(never.contains("sudo is set to never"), "{never}");
    // The summary names each failing host beside its error.
    for name in ["wrong-sudo-password", "user-never"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(name) && l.contains("FAILED")),
            "{name}:\n{stdout}"
        );
    }
    // sudo: never runs no sudo at all, not even the probe.
    let never_log = std::fs::read_to_string(logs.join("user-never.log"))?;
    assert!(never_log.contains("id -u"), "{never_log}");
    assert!(
        !never_log.contains("sudo -n") && !never_log.contains("sudo -k"),
        "{never_log}"
    );
    // sudo: always goes through sudo although the login is root.
    let always_log = std::fs::read_to_string(logs.join("root-always.log"))?;
    assert!(always_log.contains("sudo -n true"), "{always_log}");
    let sudo_log = std::fs::read_to_string(logs.join("encrypted-key.log"))?;
    assert!(sudo_log.contains("sudo password (redacted)"), "{sudo_log}");
    for entry in std::fs::read_dir(&logs)? {
        written.push_str(&std::fs::read_to_string(entry?.path())?);
    }
    for secret in [PASSPHRASE, user::PW_PASSWORD, WRONG_SUDO] {
        assert!(!written.contains(secret), "a secret was written out");
    }

    // Unset variables: refused before anything connects, each located and named.
    let unset = mshot()
        .arg("-c")
        .arg(&config_path)
        .arg("--dry-run")
        .env_remove("FLEET_KEY_PASSPHRASE")
        .env_remove("FLEET_SUDO_PASSWORD")
        .env("FLEET_WRONG_SUDO_PASSWORD", WRONG_SUDO)
        .output()?;
    let unset_err = text(&unset.stderr);
    assert_eq!(unset.status.code(), Some(2), "{unset_err}");
    let located =
        |line: usize, column: usize| format!("{}:{line}:{column}: ", config_path.display());
    for (line, column, message) in [
        (
            14,
            25,
            "key_passphrase_env: environment variable FLEET_KEY_PASSPHRASE is not set",
        ),
        (
            15,
            24,
            "sudo_password_env: environment variable FLEET_SUDO_PASSWORD is not set",
        ),
    ] {
        let want = format!("{}{message}", located(line, column));
        assert!(
            unset_err.lines().any(|l| l.starts_with(&want)),
            "no line starting {want:?} in:\n{unset_err}"
        );
    }
    assert!(unset_err.contains("nothing was started"), "{unset_err}");

    // A wrong passphrase: the key's line, the variable's name, not its value.
    let wrong = mshot()
        .arg("-c")
        .arg(&config_path)
        .arg("--dry-run")
        .env("FLEET_KEY_PASSPHRASE", WRONG_PASSPHRASE)
        .env("FLEET_SUDO_PASSWORD", user::PW_PASSWORD)
        .env("FLEET_WRONG_SUDO_PASSWORD", WRONG_SUDO)
        .output()?;
    let wrong_err = text(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(2), "{wrong_err}");
    let want = format!(
        "{}cannot decrypt key {} with the passphrase from key_passphrase_env FLEET_KEY_PASSPHRASE",
        located(13, 10),
        encrypted.private.display()
    );
    assert!(
        wrong_err.lines().any(|l| l.starts_with(&want)),
        "no line starting {want:?} in:\n{wrong_err}"
    );
    for secret in [WRONG_PASSPHRASE, user::PW_PASSWORD, WRONG_SUDO] {
        assert!(!wrong_err.contains(secret), "a secret was printed");
        assert!(
            !text(&wrong.stdout).contains(secret),
            "a secret was printed"
        );
    }

    // One host, the same rule through --sudo: a non-root login is refused.
    let single = mshot()
        .args(["--server", "127.0.0.1", "--port", &sshd.port().to_string()])
        .args(["--user", user::NOPW, "--key"])
        .arg(&plain.private)
        .arg("--module")
        .arg(&module)
        .arg("--known-hosts")
        .arg(&known_hosts)
        .arg("--output-dir")
        .arg(dir.join("single"))
        .args(["--no-agent", "--sudo", "never", "--dry-run"])
        .output()?;
    let single_err = text(&single.stderr);
    assert_eq!(single.status.code(), Some(1), "{single_err}");
    assert!(single_err.contains("sudo is set to never"), "{single_err}");
    // --sudo belongs to one host; a fleet file says it per host.
    let both = mshot()
        .arg("-c")
        .arg(&config_path)
        .args(["--sudo", "never"])
        .output()?;
    assert_eq!(both.status.code(), Some(2), "{}", text(&both.stderr));
    Ok(())
}

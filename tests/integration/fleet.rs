//! Fleet capture (`mshot -c`): a corpus of broken fleet files, each with its
//! own located error; a fleet of real sshds (good hosts, a wrong key, an
//! unreachable host, refused sudo) in dry-run mode; and, with the lab, a real
//! capture of QEMU guests next to failing hosts, and Ctrl-C in the middle.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{self, KeyPair, KeyType, Need, Sshd, user};

fn mshot() -> Command {
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

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn text(bytes: &[u8]) -> String {
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

fn report_host<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in the report: {report:#}"))
}

fn read_json(path: &Path) -> serde_json::Value {
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

/// Guests' sshd ports (issue 6's range), forwarded on 127.0.0.1 only.
const GUEST_61_PORT: u16 = 2270;
const SECOND_PORT: u16 = 2271;
const INTERRUPT_PORT: u16 = 2272;
/// Small guests keep the captures short; the kernels are the point.
const GUEST_MEM_MIB: &str = "256";

/// A lab build directory: kernel, initramfs, lime.ko, keys.
struct LabBuild {
    dir: PathBuf,
}

impl LabBuild {
    fn key(&self) -> PathBuf {
        self.dir.join("id_ed25519")
    }
    fn module(&self) -> PathBuf {
        self.dir.join("lime.ko")
    }
    fn release(&self) -> String {
        std::fs::read_to_string(self.dir.join("release"))
            .unwrap()
            .trim()
            .to_string()
    }
    fn known_hosts_line(&self, port: u16) -> String {
        let public = std::fs::read_to_string(self.dir.join("host_key.pub")).unwrap();
        let mut fields = public.split_whitespace();
        format!(
            "[127.0.0.1]:{port} {} {}",
            fields.next().unwrap(),
            fields.next().unwrap()
        )
    }
}

/// The main lab build, and a second kernel: the arm64 guest when it is
/// built (one fleet file mixing x86-64 and arm64), else the cloud flavour
/// (6.12) beside it or MSHOT_LAB_CLOUD_DIR. Without one, the second guest
/// runs the same kernel.
fn lab_builds() -> (LabBuild, LabBuild) {
    let main = std::fs::canonicalize(std::env::var("MSHOT_LAB_DIR").unwrap()).unwrap();
    let second = support::prereq::arm64_lab_dir()
        .ok()
        .or_else(|| std::env::var_os("MSHOT_LAB_CLOUD_DIR").map(PathBuf::from))
        .or_else(|| Some(main.parent()?.join("cloud-amd64")))
        .filter(|d| d.join("lime.ko").is_file() && d.join("vmlinuz").is_file())
        .unwrap_or_else(|| main.clone());
    (LabBuild { dir: main }, LabBuild { dir: second })
}

/// A guest on 127.0.0.1:port; stopped on drop.
struct Guest {
    dir: PathBuf,
    port: u16,
}

impl Guest {
    fn start(lab: &LabBuild, port: u16) -> anyhow::Result<Guest> {
        let status = Command::new(repo().join("lab/start-guest.sh"))
            .arg(&lab.dir)
            .args(["--port", &port.to_string(), "--mem", GUEST_MEM_MIB])
            .args(["--timeout", "180"])
            .status()?;
        anyhow::ensure!(status.success(), "lab/start-guest.sh failed on port {port}");
        Ok(Guest {
            dir: lab.dir.clone(),
            port,
        })
    }

    /// A command on the guest with the OpenSSH client (not mshot).
    fn ssh(&self, lab: &LabBuild, known_hosts: &Path, command: &str) -> String {
        let out = Command::new("ssh")
            .arg("-i")
            .arg(lab.key())
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"])
            .args(["-p", &self.port.to_string(), "root@127.0.0.1", command])
            .output()
            .unwrap();
        text(&out.stdout)
    }

    /// No lime module loaded and the manifest's temp dir gone.
    fn assert_clean(&self, lab: &LabBuild, known_hosts: &Path, manifest: &serde_json::Value) {
        let remote_dir = Path::new(manifest["module"]["remote_path"].as_str().unwrap())
            .parent()
            .unwrap()
            .display()
            .to_string();
        let after = self.ssh(
            lab,
            known_hosts,
            &format!(
                "grep -c '^lime ' /proc/modules; test -e {remote_dir} && echo present || echo gone"
            ),
        );
        assert_eq!(
            after.split_whitespace().collect::<Vec<_>>(),
            ["0", "gone"],
            "port {}: {after}",
            self.port
        );
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("lab/stop-guest.sh"))
            .arg(&self.dir)
            .arg(self.port.to_string())
            .status();
    }
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
        let a = s.spawn(|| Guest::start(&lab61, GUEST_61_PORT));
        let b = s.spawn(|| Guest::start(&second_lab, SECOND_PORT));
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
        // The summary line carries the hash.
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(name) && l.contains(&sha)),
            "{stdout}"
        );
        guest.assert_clean(lab, &known_hosts, &manifest);
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
    let guest = Guest::start(&lab, INTERRUPT_PORT)?;
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
    guest.assert_clean(&lab, &known_hosts, &manifest);
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

//! The LiME module repository end to end: repositories made with `mshot repo`
//! (keygen, index, sign), served by a real HTTP server on loopback or read
//! from a directory, and captures of a real sshd target (this machine, dry
//! runs) that take their module from it, one host or a fleet. The rig here
//! (repository, target, dry run) serves `repository_trust` and
//! `lab_repository` too.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{self, HttpServer, KeyPair, KeyType, Need, Sshd, user};

pub(crate) fn mshot() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mshot"));
    for var in [
        "MSHOT_PASSWORD",
        "MSHOT_SUDO_PASSWORD",
        "MSHOT_KEY_PASSPHRASE",
        "MSHOT_JUMP_PASSWORD",
        "MSHOT_REPOSITORY_URL",
        "MSHOT_REPOSITORY_KEY",
        "MSHOT_REPOSITORY_KEY_PASSWORD",
        "SSH_AUTH_SOCK",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

pub(crate) fn ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub(crate) fn host_release() -> String {
    let out = Command::new("uname").arg("-r").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A file that passes mshot's module checks for `release` on x86-64 (ELF
/// header, e_machine, vermagic); dry runs push it, never load it.
fn fake_module(release: &str, filler: u8) -> Vec<u8> {
    let mut bytes = vec![0u8; 64];
    bytes[..4].copy_from_slice(b"\x7fELF");
    bytes[18..20].copy_from_slice(&62u16.to_le_bytes());
    bytes.extend_from_slice(format!("\0vermagic={release} SMP mod_unload \0").as_bytes());
    bytes.extend((0..20_000u32).map(|i| (i % 251) as u8 ^ filler));
    bytes
}

/// A repository made with `mshot repo keygen|index|sign`, holding modules for
/// this machine's kernel and a few neighbours.
pub(crate) struct Repo {
    pub(crate) root: tempfile::TempDir,
    pub(crate) public_key: PathBuf,
    secret_key: PathBuf,
}

impl Repo {
    pub(crate) fn create(releases: &[&str]) -> Repo {
        let root = tempfile::tempdir().unwrap();
        let keys = root.path().join("keys");
        let repo = root.path().join("repo");
        let modules = repo.join("modules/x86_64");
        std::fs::create_dir_all(&modules).unwrap();
        for (i, release) in releases.iter().enumerate() {
            std::fs::write(
                modules.join(format!("lime-{release}.ko")),
                fake_module(release, i as u8),
            )
            .unwrap();
        }
        let (secret_key, public_key) = (keys.join("repo.key"), keys.join("repo.pub"));
        ok(mshot()
            .args(["repo", "keygen", "--unencrypted", "--secret-key"])
            .arg(&secret_key)
            .arg("--public-key")
            .arg(&public_key));
        let repo = Repo {
            root,
            public_key,
            secret_key,
        };
        repo.index_and_sign();
        repo
    }

    pub(crate) fn dir(&self) -> PathBuf {
        self.root.path().join("repo")
    }

    pub(crate) fn module_path(&self, release: &str) -> PathBuf {
        self.dir().join(format!("modules/x86_64/lime-{release}.ko"))
    }

    fn index_and_sign(&self) {
        ok(mshot().args(["repo", "index"]).arg(self.dir()));
        ok(mshot()
            .args(["repo", "sign"])
            .arg(self.dir())
            .arg("--secret-key")
            .arg(&self.secret_key));
    }

    fn manifest(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.dir().join("manifest.json")).unwrap()).unwrap()
    }
}

/// A real sshd target (this machine) with a key for the passwordless-sudo user.
pub(crate) struct Target {
    sshd: Sshd,
    key: KeyPair,
    known_hosts: PathBuf,
}

impl Target {
    pub(crate) fn start() -> anyhow::Result<Target> {
        let sshd = Sshd::builder().start()?;
        let key = KeyPair::generate(sshd.dir(), "client", KeyType::Ed25519, None)?;
        sshd.authorize(user::NOPW, &key)?;
        let known_hosts = sshd.dir().join("mshot_known_hosts");
        sshd.append_known_hosts(&known_hosts)?;
        Ok(Target {
            sshd,
            key,
            known_hosts,
        })
    }

    /// A dry run (connect, root, push, hash, clean up) with `module_args`;
    /// the cache lives in `cache` (XDG_CACHE_HOME).
    pub(crate) fn dry_run(&self, module_args: &[&str], cache: &Path, env: &[(&str, &str)]) -> Run {
        let out_dir = tempfile::tempdir().unwrap();
        let mut cmd = mshot();
        cmd.arg("--output-dir")
            .arg(out_dir.path())
            .args(["--filename", "img.lime"])
            .args(["--server", &self.sshd.ip().to_string()])
            .args(["--port", &self.sshd.port().to_string()])
            .args(["--user", user::NOPW])
            .arg("--key")
            .arg(&self.key.private)
            .arg("--known-hosts")
            .arg(&self.known_hosts)
            .args(["--dry-run", "--connect-timeout", "10"])
            .args(module_args)
            .env("XDG_CACHE_HOME", cache);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let output = cmd.output().unwrap();
        Run { output, out_dir }
    }
}

pub(crate) struct Run {
    pub(crate) output: Output,
    out_dir: tempfile::TempDir,
}

impl Run {
    pub(crate) fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    pub(crate) fn manifest(&self) -> serde_json::Value {
        let path = self.out_dir.path().join("img.json");
        let text = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("no manifest {}: {e}; {}", path.display(), self.stderr()));
        serde_json::from_slice(&text).unwrap()
    }
    fn assert_ok(&self) -> serde_json::Value {
        assert_eq!(self.output.status.code(), Some(0), "{}", self.stderr());
        let manifest = self.manifest();
        let pushed = manifest["module"]["remote_path"].as_str().unwrap();
        assert!(pushed.starts_with("/tmp/mshot."), "{pushed}");
        assert!(!Path::new(pushed).exists(), "{pushed} left behind");
        manifest
    }
    /// Refused with `expected` in the one-line error, and nothing done on the
    /// target but reading the kernel release (and, when `probes_allowed`, the
    /// read-only root probes that pick the method).
    pub(crate) fn assert_refused(
        &self,
        expected: &[&str],
        probes_allowed: bool,
    ) -> serde_json::Value {
        let stderr = self.stderr();
        assert_eq!(self.output.status.code(), Some(1), "{stderr}");
        for part in expected {
            assert!(stderr.contains(part), "{part:?} not in: {stderr}");
        }
        let error_lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("mshot:")).collect();
        assert_eq!(error_lines.len(), 1, "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        let manifest = self.manifest();
        let audit = manifest["audit"].as_array().unwrap();
        let commands: Vec<&str> = audit
            .iter()
            .map(|a| a["command"].as_str().unwrap())
            .collect();
        if probes_allowed {
            assert_eq!(commands[0], "uname -r; uname -m; id -u");
            for command in &commands {
                for write in ["mktemp", "cat >", "insmod", "rm -rf"] {
                    assert!(!command.contains(write), "{command} ran: {manifest:#}");
                }
            }
        } else {
            assert_eq!(commands, ["uname -r; uname -m; id -u"], "{manifest:#}");
        }
        assert_eq!(manifest["module"]["remote_path"], "");
        assert!(manifest["module"]["repository"]["repository"].is_string());
        assert!(manifest["image"].is_null());
        assert!(
            !self.out_dir.path().join("img.lime").exists()
                && !self.out_dir.path().join("img.lime.part").exists()
        );
        manifest
    }
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes))
}

#[test]
fn http_repository_supplies_a_verified_module_and_caches_it() -> anyhow::Result<()> {
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::TestUsers,
        Need::Python3
    );
    let release = host_release();
    let repo = Repo::create(&[&release, "6.1.0-55-amd64", "6.12.117+deb12-cloud-amd64"]);
    let server = HttpServer::serve(&repo.dir())?;
    let target = Target::start()?;
    let cache = tempfile::tempdir()?;
    let key = repo.public_key.to_str().unwrap();
    let args = ["--repository-url", &server.url(), "--repository-key", key];
    let module_url = format!("/modules/x86_64/lime-{release}.ko");
    let expected_sha = repo.manifest()["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["kernel_release"] == release.as_str())
        .unwrap()["sha256"]
        .clone();

    // First run: downloaded, verified, pushed, cached under its SHA-256.
    let manifest = target.dry_run(&args, cache.path(), &[]).assert_ok();
    let origin = &manifest["module"]["repository"];
    assert_eq!(origin["repository"], server.url());
    assert_eq!(origin["entry"]["kernel_release"], release.as_str());
    assert_eq!(origin["from_cache"], false);
    assert_eq!(manifest["module"]["sha256"], expected_sha);
    assert!(
        origin["signed_comment"]
            .as_str()
            .unwrap()
            .contains("file:manifest.json")
    );
    assert_eq!(server.gets(&module_url), 1);
    let cached = cache.path().join(format!(
        "mshot/modules/{}.ko",
        expected_sha.as_str().unwrap()
    ));
    assert_eq!(
        std::fs::read(&cached)?,
        std::fs::read(repo.module_path(&release))?
    );
    // The target's sha256sum of what it received was checked against this.
    let audit = manifest["audit"].as_array().unwrap();
    assert!(
        audit
            .iter()
            .any(|a| a["command"].as_str().unwrap().contains("sha256sum"))
    );

    // Second run: the cached copy, re-verified; the manifest is fetched again.
    let manifest = target.dry_run(&args, cache.path(), &[]).assert_ok();
    assert_eq!(manifest["module"]["repository"]["from_cache"], true);
    assert_eq!(server.gets(&module_url), 1);
    assert_eq!(server.gets("/manifest.json"), 2);

    // A corrupted cache entry is detected, discarded and downloaded again.
    let mut bytes = std::fs::read(&cached)?;
    bytes[100] ^= 0xff;
    std::fs::write(&cached, &bytes)?;
    let run = target.dry_run(&args, cache.path(), &[]);
    let manifest = run.assert_ok();
    assert!(
        run.stderr().contains("discarding the cached module"),
        "{}",
        run.stderr()
    );
    assert_eq!(manifest["module"]["repository"]["from_cache"], false);
    assert_eq!(server.gets(&module_url), 2);
    assert_eq!(
        std::fs::read(&cached)?,
        std::fs::read(repo.module_path(&release))?
    );
    Ok(())
}

#[test]
fn directory_repository_by_path_file_url_and_environment() -> anyhow::Result<()> {
    support::require!(Need::Root, Need::Sshd, Need::SshClient, Need::TestUsers);
    let release = host_release();
    let repo = Repo::create(&[&release]);
    let target = Target::start()?;
    let cache = tempfile::tempdir()?;
    let dir = repo.dir();
    let key = repo.public_key.to_str().unwrap();

    let manifest = target
        .dry_run(
            &[
                "--repository-url",
                dir.to_str().unwrap(),
                "--repository-key",
                key,
            ],
            cache.path(),
            &[],
        )
        .assert_ok();
    assert_eq!(
        manifest["module"]["local_path"],
        repo.module_path(&release).display().to_string()
    );
    // A directory repository is read in place, not cached.
    assert!(!cache.path().join("mshot").exists());

    let file_url = format!("file://{}", dir.display());
    target
        .dry_run(
            &["--repository-url", &file_url, "--repository-key", key],
            cache.path(),
            &[],
        )
        .assert_ok();

    // The environment names the repository and the key (the RW... line itself).
    let key_line = std::fs::read_to_string(&repo.public_key)?
        .lines()
        .nth(1)
        .unwrap()
        .to_string();
    let manifest = target
        .dry_run(
            &[],
            cache.path(),
            &[
                ("MSHOT_REPOSITORY_URL", &file_url),
                ("MSHOT_REPOSITORY_KEY", &key_line),
            ],
        )
        .assert_ok();
    assert_eq!(
        manifest["module"]["repository"]["key_origin"],
        "--repository-key"
    );

    // A settings file names the repository and pins its key for a bare
    // --repository; a misspelt key in it stops the capture before any
    // connection, naming the file.
    let settings = repo.root.path().join("config.yaml");
    std::fs::write(
        &settings,
        format!("repository:\n  url: {file_url}\n  key: {key}\n"),
    )?;
    let settings_env = [("MSHOT_CONFIG", settings.to_str().unwrap())];
    let manifest = target
        .dry_run(&["--repository"], cache.path(), &settings_env)
        .assert_ok();
    assert_eq!(
        manifest["module"]["local_path"],
        repo.module_path(&release).display().to_string()
    );
    assert_eq!(manifest["module"]["repository"]["key_origin"], key);
    std::fs::write(&settings, format!("repository:\n  ulr: {file_url}\n"))?;
    let run = target.dry_run(&["--repository"], cache.path(), &settings_env);
    let stderr = run.stderr();
    assert!(!run.output.status.success(), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("mshot:")).collect();
    assert!(
        errors.len() == 1 && errors[0].contains("config.yaml") && errors[0].contains("ulr"),
        "{stderr}"
    );
    assert!(!run.out_dir.path().join("img.json").exists(), "{stderr}");

    // --module wins over any repository, even one that would be refused.
    let module = repo.root.path().join("own.ko");
    std::fs::write(&module, fake_module(&release, 7))?;
    let manifest = target
        .dry_run(
            &[
                "--module",
                module.to_str().unwrap(),
                "--repository-url",
                "http://127.0.0.1:9/",
            ],
            cache.path(),
            &[],
        )
        .assert_ok();
    assert!(manifest["module"]["repository"].is_null());
    assert_eq!(
        manifest["module"]["local_path"],
        module.display().to_string()
    );
    Ok(())
}

#[test]
fn a_fleet_takes_its_modules_from_the_repository() -> anyhow::Result<()> {
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::TestUsers,
        Need::Python3
    );
    let release = host_release();
    let repo = Repo::create(&[&release]);
    let server = HttpServer::serve(&repo.dir())?;
    let one = Target::start()?;
    let two = Target::start()?;
    two.sshd.authorize(user::NOPW, &one.key)?;
    let work = tempfile::tempdir()?;
    let known_hosts = work.path().join("known_hosts");
    one.sshd.append_known_hosts(&known_hosts)?;
    two.sshd.append_known_hosts(&known_hosts)?;
    let config = format!(
        "output_dir: out\nrepository:\n  enabled: true\n  url: {url}\n  key: {key}\ndefaults:\n  known_hosts: {kh}\n  key: {client}\n  username: {user}\n  agent: false\n  method: lime\nhosts:\n  - {{addr: 127.0.0.1, port: {p1}, name: one, filename: one.lime}}\n  - {{addr: 127.0.0.1, port: {p2}, name: two, filename: two.lime}}\n",
        url = server.url(),
        key = repo.public_key.display(),
        kh = known_hosts.display(),
        client = one.key.private.display(),
        user = user::NOPW,
        p1 = one.sshd.port(),
        p2 = two.sshd.port(),
    );
    let config_path = work.path().join("fleet.yaml");
    std::fs::write(&config_path, config)?;
    let output = mshot()
        .arg("-c")
        .arg(&config_path)
        .arg("--dry-run")
        .env("XDG_CACHE_HOME", work.path().join("cache"))
        .output()?;
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    for host in ["one", "two"] {
        let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(
            work.path().join(format!("out/{host}.json")),
        )?)?;
        assert_eq!(
            manifest["module"]["repository"]["entry"]["kernel_release"],
            release.as_str(),
            "{manifest:#}"
        );
        assert!(
            manifest["module"]["remote_path"]
                .as_str()
                .unwrap()
                .starts_with("/tmp/mshot.")
        );
    }
    assert_eq!(server.gets("/manifest.json"), 2);
    Ok(())
}

#[test]
fn the_shipped_repository_verifies_with_the_builtin_key() {
    // kernel-modules/repo is what the Docker image ships as the default
    // `--repository`; it must stay signed by the key built into mshot.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernel-modules/repo");
    let out = ok(mshot().args(["repo", "verify"]).arg(&dir));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("(built-in key)"), "{stdout}");
    let releases: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("ok x86_64"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    // One release of each bookworm flavour at least.
    for (prefix, suffix) in [
        ("6.1.0-", "-amd64"),
        ("6.1.0-", "-cloud-amd64"),
        ("6.12.", "+deb12-amd64"),
        ("6.12.", "+deb12-cloud-amd64"),
    ] {
        assert!(
            releases.iter().any(|r| r.starts_with(prefix)
                && r.ends_with(suffix)
                && (suffix.contains("cloud") || !r.contains("cloud"))),
            "no {prefix}*{suffix} in {releases:?}"
        );
    }
}

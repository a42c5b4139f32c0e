//! mshot against real OpenSSH sshd: authentication, host keys, sudo and jump
//! chains. The target here is this machine's own kernel, so these runs use
//! `--dry-run`: everything up to loading LiME (connect, become root, push the
//! module, check its hash on the target, clean up) happens for real.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{self, JumpChain, KeyPair, KeyType, Need, Sshd, user};

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

/// A file that passes mshot's pre-flight module checks for this machine's
/// kernel (ELF, x86-64, vermagic = `uname -r`). Dry runs push it, never load it.
fn dry_run_module(dir: &Path) -> PathBuf {
    let release =
        String::from_utf8(Command::new("uname").arg("-r").output().unwrap().stdout).unwrap();
    let mut bytes = vec![0u8; 64];
    bytes[..4].copy_from_slice(b"\x7fELF");
    bytes[18..20].copy_from_slice(&62u16.to_le_bytes());
    bytes.extend_from_slice(format!("\0vermagic={} SMP mod_unload \0", release.trim()).as_bytes());
    bytes.extend((0..100_000u32).map(|i| (i % 251) as u8));
    let path = dir.join("dry-run.ko");
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The manifest of a run whose output went to `dir`.
fn manifest_in(dir: &Path) -> serde_json::Value {
    let path = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .expect("a manifest");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The target is this machine: the module's temp dir must be gone, and the
/// manifest must say cleanup succeeded.
fn assert_cleaned_up(dir: &Path) {
    let manifest = manifest_in(dir);
    let remote = manifest["module"]["remote_path"].as_str().unwrap();
    assert!(remote.starts_with("/tmp/mshot."), "{remote}");
    let temp_dir = Path::new(remote).parent().unwrap();
    assert!(!temp_dir.exists(), "{} left behind", temp_dir.display());
    assert_eq!(manifest["cleanup"]["temp_dir_removed"], true);
    assert_eq!(manifest["cleanup"]["errors"].as_array().unwrap().len(), 0);
    let audit = manifest["audit"].as_array().unwrap();
    assert!(
        audit
            .iter()
            .any(|a| a["command"].as_str().unwrap().contains("sha256sum"))
    );
}

struct Run {
    output: Output,
    out_dir: PathBuf,
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.out_dir);
    }
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    fn code(&self) -> Option<i32> {
        self.output.status.code()
    }
}

fn dry_run(
    sshd: &Sshd,
    user: &str,
    key: Option<&KeyPair>,
    known_hosts: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Run {
    let module = dry_run_module(sshd.dir());
    let out_dir = tempfile::tempdir().unwrap().keep();
    let mut cmd = mshot();
    cmd.arg("--output-dir").arg(&out_dir);
    cmd.args([
        "--server",
        &sshd.ip().to_string(),
        "--port",
        &sshd.port().to_string(),
        "--user",
        user,
    ])
    .arg("--known-hosts")
    .arg(known_hosts)
    .arg("--module")
    .arg(&module)
    .arg("--dry-run")
    .args(["--connect-timeout", "10"])
    .args(extra);
    if let Some(key) = key {
        cmd.arg("--key").arg(&key.private);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    Run {
        output: cmd.output().unwrap(),
        out_dir,
    }
}

fn known_hosts_for(sshd: &Sshd) -> PathBuf {
    let path = sshd.dir().join("mshot_known_hosts");
    let _ = std::fs::remove_file(&path);
    sshd.append_known_hosts(&path).unwrap();
    path
}

#[test]
fn key_auth_with_every_key_type_and_passwordless_sudo() -> anyhow::Result<()> {
    support::require!(Need::Root, Need::Sshd, Need::SshClient, Need::TestUsers);
    let sshd = Sshd::builder().start()?;
    let known_hosts = known_hosts_for(&sshd);
    for kind in [KeyType::Ed25519, KeyType::Rsa, KeyType::Ecdsa] {
        let key = KeyPair::generate(sshd.dir(), &format!("client-{kind:?}"), kind, None)?;
        sshd.authorize(user::NOPW, &key)?;
        let run = dry_run(&sshd, user::NOPW, Some(&key), &known_hosts, &[], &[]);
        assert_eq!(run.code(), Some(0), "{kind:?}: {}", run.stderr());
        assert!(run.stdout().contains("dry run OK"), "{}", run.stdout());
        assert!(
            run.stdout().contains("sudo without a password"),
            "{}",
            run.stdout()
        );
        assert_cleaned_up(&run.out_dir);
        assert_eq!(manifest_in(&run.out_dir)["privilege"], "sudo_no_password");
    }
    Ok(())
}

/// mshot asks for ChaCha20-Poly1305 first, as OpenSSH does; a server that
/// allows only one of the others (aes128-gcm is not in russh's default list)
/// still gets a session. sshd's DEBUG log names the cipher it agreed to.
#[test]
fn cipher_preference_and_servers_that_allow_one_cipher() -> anyhow::Result<()> {
    support::require!(Need::Root, Need::Sshd, Need::SshClient, Need::TestUsers);
    let preferred = "chacha20-poly1305@openssh.com";
    for (allowed, expected) in [
        (None, preferred),
        (
            Some("chacha20-poly1305@openssh.com"),
            "chacha20-poly1305@openssh.com",
        ),
        (Some("aes128-gcm@openssh.com"), "aes128-gcm@openssh.com"),
        (Some("aes128-ctr"), "aes128-ctr"),
    ] {
        let mut builder = Sshd::builder().log_level("DEBUG1");
        if let Some(cipher) = allowed {
            builder = builder.config_line(format!("Ciphers {cipher}"));
        }
        let sshd = builder.start()?;
        let known_hosts = known_hosts_for(&sshd);
        let key = KeyPair::generate(sshd.dir(), "client", KeyType::Ed25519, None)?;
        sshd.authorize(user::NOPW, &key)?;
        let run = dry_run(&sshd, user::NOPW, Some(&key), &known_hosts, &[], &[]);
        assert_eq!(run.code(), Some(0), "{allowed:?}: {}", run.stderr());
        let log = sshd.log();
        let agreed: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("kex: client->server cipher:"))
            .filter_map(|l| l.split("cipher: ").nth(1))
            .filter_map(|rest| rest.split_whitespace().next())
            .collect();
        assert!(!agreed.is_empty(), "no kex line in sshd's log:\n{log}");
        assert!(
            agreed.iter().all(|c| *c == expected),
            "{allowed:?}: expected {expected}, sshd agreed to {agreed:?}"
        );
        assert_cleaned_up(&run.out_dir);
    }
    Ok(())
}

/// One P-256 key in 512 from ssh-keygen has a private scalar below 2^247,
/// stored as a 31-byte mpint, which ssh-key alone refuses ("length invalid").
/// The checked-in fixtures are such a key from ssh-keygen, plain and
/// encrypted; both must load and log in.
#[test]
fn ecdsa_keys_with_a_short_private_scalar_log_in() -> anyhow::Result<()> {
    support::require!(Need::Root, Need::Sshd, Need::SshClient, Need::TestUsers);
    let sshd = Sshd::builder().start()?;
    let known_hosts = known_hosts_for(&sshd);
    let plain = KeyPair::fixture(sshd.dir(), "ecdsa-p256-short-scalar", KeyType::Ecdsa, None)?;
    let locked = KeyPair::fixture(
        sshd.dir(),
        "ecdsa-p256-short-scalar-encrypted",
        KeyType::Ecdsa,
        Some("mshot fixture"),
    )?;
    assert_eq!(plain.public_key, locked.public_key, "one key, two files");
    sshd.authorize(user::NOPW, &plain)?;
    let fingerprint = String::from_utf8(
        Command::new("ssh-keygen")
            .arg("-lf")
            .arg(&plain.public)
            .output()?
            .stdout,
    )?;
    let fingerprint = fingerprint.split_whitespace().nth(1).unwrap().to_string();
    assert!(fingerprint.starts_with("SHA256:"), "{fingerprint}");
    // sshd (LogLevel VERBOSE) names the key it accepted by fingerprint.
    let accepted = |log: &str| {
        log.lines()
            .filter(|l| {
                l.contains(&format!("Accepted publickey for {}", user::NOPW))
                    && l.contains(&fingerprint)
            })
            .count()
    };
    for (key, env) in [
        (&plain, vec![]),
        (&locked, vec![("MSHOT_KEY_PASSPHRASE", "mshot fixture")]),
    ] {
        let logins_before = accepted(&sshd.log());
        let run = dry_run(&sshd, user::NOPW, Some(key), &known_hosts, &[], &env);
        assert_eq!(
            run.code(),
            Some(0),
            "{}: {}",
            key.private.display(),
            run.stderr()
        );
        assert!(run.stdout().contains("dry run OK"), "{}", run.stdout());
        let log = sshd.log();
        assert_eq!(
            accepted(&log),
            logins_before + 1,
            "sshd did not accept the fixture key {fingerprint} once:\n{log}"
        );
    }
    Ok(())
}

#[test]
fn encrypted_key_reads_its_passphrase_from_the_environment() -> anyhow::Result<()> {
    support::require!(Need::Root, Need::Sshd, Need::SshClient, Need::TestUsers);
    let sshd = Sshd::builder().start()?;
    let known_hosts = known_hosts_for(&sshd);
    let key = KeyPair::generate(sshd.dir(), "locked", KeyType::Ed25519, Some("open sesame"))?;
    sshd.authorize(user::NOPW, &key)?;
    let good = dry_run(
        &sshd,
        user::NOPW,
        Some(&key),
        &known_hosts,
        &[],
        &[("MSHOT_KEY_PASSPHRASE", "open sesame")],
    );
    assert_eq!(good.code(), Some(0), "{}", good.stderr());
    let bad = dry_run(
        &sshd,
        user::NOPW,
        Some(&key),
        &known_hosts,
        &[],
        &[("MSHOT_KEY_PASSPHRASE", "wrong")],
    );
    assert_eq!(bad.code(), Some(2), "{}", bad.stderr());
    assert!(
        bad.stderr().contains("cannot decrypt key"),
        "{}",
        bad.stderr()
    );
    Ok(())
}

#[test]
fn password_login_and_sudo_password_on_stdin() -> anyhow::Result<()> {
    support::require!(Need::Root, Need::Sshd, Need::SshClient, Need::TestUsers);
    let sshd = Sshd::builder().password_auth(true).start()?;
    let known_hosts = known_hosts_for(&sshd);
    // The login password doubles as the sudo password; the module goes through
    // `sudo -S` after the password line, and its hash must still match.
    let run = dry_run(
        &sshd,
        user::PW,
        None,
        &known_hosts,
        &[],
        &[("MSHOT_PASSWORD", user::PW_PASSWORD)],
    );
    assert_eq!(run.code(), Some(0), "{}", run.stderr());
    assert!(
        run.stdout().contains("sudo with a password"),
        "{}",
        run.stdout()
    );
    assert_cleaned_up(&run.out_dir);
    let manifest =
        std::fs::read_to_string(std::fs::read_dir(&run.out_dir)?.next().unwrap()?.path())?;
    assert!(
        !manifest.contains(user::PW_PASSWORD),
        "the manifest leaks the password"
    );
    assert!(manifest.contains("sudo password (redacted)"));
    // The password never reaches the command line of any process: sudo reads it on stdin.
    let wrong_sudo = dry_run(
        &sshd,
        user::PW,
        None,
        &known_hosts,
        &[],
        &[
            ("MSHOT_PASSWORD", user::PW_PASSWORD),
            ("MSHOT_SUDO_PASSWORD", "not-it"),
        ],
    );
    assert_eq!(wrong_sudo.code(), Some(1));
    assert!(
        wrong_sudo
            .stderr()
            .contains("sudo refused the password from MSHOT_SUDO_PASSWORD"),
        "{}",
        wrong_sudo.stderr()
    );
    assert!(!wrong_sudo.stderr().contains("not-it"));
    Ok(())
}

#[test]
fn refused_sudo_is_a_clear_error() -> anyhow::Result<()> {
    support::require!(Need::Root, Need::Sshd, Need::SshClient, Need::TestUsers);
    let sshd = Sshd::builder().password_auth(true).start()?;
    let known_hosts = known_hosts_for(&sshd);
    let run = dry_run(
        &sshd,
        user::NOSUDO,
        None,
        &known_hosts,
        &[],
        &[("MSHOT_PASSWORD", user::NOSUDO_PASSWORD)],
    );
    assert_eq!(run.code(), Some(1));
    let err = run.stderr();
    assert!(err.contains("sudo refused"), "{err}");
    assert_eq!(
        err.trim()
            .lines()
            .filter(|l| l.starts_with("mshot:"))
            .count(),
        1,
        "{err}"
    );
    Ok(())
}

#[test]
fn wrong_key_is_refused() -> anyhow::Result<()> {
    support::require!(Need::Root, Need::Sshd, Need::SshClient, Need::TestUsers);
    let sshd = Sshd::builder().start()?;
    let known_hosts = known_hosts_for(&sshd);
    let key = KeyPair::generate(sshd.dir(), "stranger", KeyType::Ed25519, None)?;
    let run = dry_run(&sshd, user::NOPW, Some(&key), &known_hosts, &[], &[]);
    assert_eq!(run.code(), Some(1));
    assert!(
        run.stderr().contains("authentication failed"),
        "{}",
        run.stderr()
    );
    assert!(run.stderr().contains("stranger"), "{}", run.stderr());
    Ok(())
}

#[test]
fn unknown_host_is_refused_unless_accepted_and_then_recorded() -> anyhow::Result<()> {
    support::require!(Need::Root, Need::Sshd, Need::SshClient, Need::TestUsers);
    let sshd = Sshd::builder().start()?;
    let key = KeyPair::generate(sshd.dir(), "client", KeyType::Ed25519, None)?;
    sshd.authorize(user::NOPW, &key)?;
    let known_hosts = sshd.dir().join("empty_known_hosts");
    std::fs::write(&known_hosts, "")?;
    let refused = dry_run(&sshd, user::NOPW, Some(&key), &known_hosts, &[], &[]);
    assert_eq!(refused.code(), Some(1));
    assert!(
        refused.stderr().contains("--accept-new-host-keys"),
        "{}",
        refused.stderr()
    );
    assert!(refused.stderr().contains("SHA256:"), "{}", refused.stderr());
    assert_eq!(std::fs::read_to_string(&known_hosts)?, "");

    let accepted = dry_run(
        &sshd,
        user::NOPW,
        Some(&key),
        &known_hosts,
        &["--accept-new-host-keys"],
        &[],
    );
    assert_eq!(accepted.code(), Some(0), "{}", accepted.stderr());
    let recorded = std::fs::read_to_string(&known_hosts)?;
    assert!(
        recorded.contains(&format!("[{}]:{}", sshd.ip(), sshd.port())),
        "{recorded}"
    );
    assert!(recorded.contains(sshd.host_public_key().split_whitespace().nth(1).unwrap()));
    // The second run needs no flag: the key is known now.
    let again = dry_run(&sshd, user::NOPW, Some(&key), &known_hosts, &[], &[]);
    assert_eq!(again.code(), Some(0), "{}", again.stderr());
    Ok(())
}

#[test]
fn changed_host_key_is_always_refused_with_both_fingerprints() -> anyhow::Result<()> {
    support::require!(Need::Root, Need::Sshd, Need::SshClient, Need::TestUsers);
    let sshd = Sshd::builder().start()?;
    let key = KeyPair::generate(sshd.dir(), "client", KeyType::Ed25519, None)?;
    sshd.authorize(user::NOPW, &key)?;
    let impostor = KeyPair::generate(sshd.dir(), "old_host_key", KeyType::Ed25519, None)?;
    let known_hosts = sshd.dir().join("stale_known_hosts");
    std::fs::write(
        &known_hosts,
        format!("{} {}\n", sshd.known_hosts_host(), impostor.public_key),
    )?;
    for extra in [&[][..], &["--accept-new-host-keys"][..]] {
        let run = dry_run(&sshd, user::NOPW, Some(&key), &known_hosts, extra, &[]);
        assert_eq!(run.code(), Some(1));
        let err = run.stderr();
        assert!(err.contains("HOST KEY CHANGED"), "{err}");
        assert!(err.contains(&sshd.known_hosts_host()), "{err}");
        assert_eq!(err.matches("SHA256:").count(), 2, "{err}");
    }
    Ok(())
}

#[test]
fn jump_chains_of_one_and_two_hops() -> anyhow::Result<()> {
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::Netns,
        Need::TestUsers
    );
    for hops in [1, 2] {
        let chain = JumpChain::start(&format!("mj{hops}"), hops, |_, b| b)?;
        let key = KeyPair::generate(chain.target.dir(), "client", KeyType::Ed25519, None)?;
        chain.authorize(user::NOPW, &key)?;
        let known_hosts = chain.target.dir().join("chain_known_hosts");
        chain.append_known_hosts(&known_hosts)?;

        // Without the jumps the target is out of reach.
        let direct = dry_run(
            &chain.target,
            user::NOPW,
            Some(&key),
            &known_hosts,
            &["--connect-timeout", "3"],
            &[],
        );
        assert_ne!(direct.code(), Some(0));

        let jumps = chain.proxy_jump(user::NOPW);
        let run = dry_run(
            &chain.target,
            user::NOPW,
            Some(&key),
            &known_hosts,
            &["-J", &jumps],
            &[],
        );
        assert_eq!(run.code(), Some(0), "{hops} hops: {}", run.stderr());
        assert!(run.stdout().contains("dry run OK"));
    }
    Ok(())
}

#[test]
fn margaritashotgun_jump_flags_and_unknown_jump_host() -> anyhow::Result<()> {
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::Netns,
        Need::TestUsers
    );
    let chain = JumpChain::start("msj", 1, |_, b| b)?;
    let key = KeyPair::generate(chain.target.dir(), "client", KeyType::Ed25519, None)?;
    chain.authorize(user::NOPW, &key)?;
    let jump = &chain.jumps[0];
    let (jump_ip, jump_port) = (jump.ip().to_string(), jump.port().to_string());
    let flags = [
        "--jump-server",
        jump_ip.as_str(),
        "--jump-port",
        jump_port.as_str(),
        "--jump-username",
        user::NOPW,
    ];

    // Only the target is known: the jump host's unknown key stops the run.
    let only_target = chain.target.dir().join("only_target");
    chain.target.append_known_hosts(&only_target)?;
    let refused = dry_run(
        &chain.target,
        user::NOPW,
        Some(&key),
        &only_target,
        &flags,
        &[],
    );
    assert_eq!(refused.code(), Some(1));
    assert!(
        refused.stderr().contains(&jump.known_hosts_host()),
        "{}",
        refused.stderr()
    );

    let all = chain.target.dir().join("all_known");
    chain.append_known_hosts(&all)?;
    let run = dry_run(&chain.target, user::NOPW, Some(&key), &all, &flags, &[]);
    assert_eq!(run.code(), Some(0), "{}", run.stderr());
    Ok(())
}

/// A real OpenSSH `ssh-agent` holding the only key that works: mshot must
/// find it through `SSH_AUTH_SOCK` with no `--key`, for ed25519 and for RSA
/// (whose signature hash the server negotiates).
#[test]
fn ssh_agent_authenticates_when_no_key_file_is_given() -> anyhow::Result<()> {
    support::require!(Need::Root, Need::Sshd, Need::SshClient, Need::TestUsers);
    let sshd = Sshd::builder().start()?;
    let known_hosts = known_hosts_for(&sshd);
    for kind in [KeyType::Ed25519, KeyType::Rsa] {
        let key = KeyPair::generate(sshd.dir(), &format!("agent-{kind:?}"), kind, None)?;
        sshd.authorize(user::NOPW, &key)?;
        let agent = Agent::start(sshd.dir(), &format!("agent-{kind:?}.sock"))?;

        // An empty agent has nothing to offer: the login must fail cleanly.
        let empty = dry_run(
            &sshd,
            user::NOPW,
            None,
            &known_hosts,
            &[],
            &[("SSH_AUTH_SOCK", agent.socket())],
        );
        assert_ne!(empty.code(), Some(0), "{kind:?}: {}", empty.stdout());
        assert!(
            empty.stderr().to_lowercase().contains("authentication"),
            "{kind:?}: {}",
            empty.stderr()
        );

        agent.add(&key)?;
        let run = dry_run(
            &sshd,
            user::NOPW,
            None,
            &known_hosts,
            &[],
            &[("SSH_AUTH_SOCK", agent.socket())],
        );
        assert_eq!(run.code(), Some(0), "{kind:?}: {}", run.stderr());
        assert!(run.stdout().contains("dry run OK"), "{}", run.stdout());
        assert_cleaned_up(&run.out_dir);

        // --no-agent must really ignore it.
        let refused = dry_run(
            &sshd,
            user::NOPW,
            None,
            &known_hosts,
            &["--no-agent"],
            &[("SSH_AUTH_SOCK", agent.socket())],
        );
        assert_ne!(refused.code(), Some(0), "{kind:?}: {}", refused.stdout());
    }
    Ok(())
}

/// An `ssh-agent -D` of our own, killed on drop.
struct Agent {
    child: std::process::Child,
    socket: String,
}

impl Agent {
    fn start(dir: &Path, name: &str) -> anyhow::Result<Agent> {
        let socket = dir.join(name);
        let _ = std::fs::remove_file(&socket);
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(std::process::Stdio::null())
            .spawn()?;
        for _ in 0..100 {
            if socket.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        anyhow::ensure!(
            socket.exists(),
            "ssh-agent did not create {}",
            socket.display()
        );
        Ok(Agent {
            child,
            socket: socket.to_string_lossy().into_owned(),
        })
    }

    fn socket(&self) -> &str {
        &self.socket
    }

    fn add(&self, key: &KeyPair) -> anyhow::Result<()> {
        let out = Command::new("ssh-add")
            .arg(&key.private)
            .env("SSH_AUTH_SOCK", &self.socket)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "ssh-add failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! Proves the harness with the OpenSSH client: if these fail, the sshds,
//! namespaces, users or data source are wrong, not mshot.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::datasource::Content;
use crate::support::{
    self, DataSource, JumpChain, KeyPair, KeyType, KillOnDrop, Need, OpenSsh, Sshd, pattern, user,
};

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts that `out` succeeded, showing ssh's and sshd's side if not.
fn assert_ok(out: &Output, sshd: &Sshd) {
    assert!(
        out.status.success(),
        "ssh failed ({}):\nstdout: {}\nstderr: {}\nsshd log:\n{}",
        out.status,
        stdout(out),
        stderr(out),
        sshd.log()
    );
}

fn cannot_connect(addr: std::net::SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err()
}

#[test]
fn key_login_runs_a_command() -> anyhow::Result<()> {
    support::require!(Need::Root, Need::Sshd, Need::SshClient, Need::TestUsers);
    let sshd = Sshd::builder().start()?;
    let key = KeyPair::generate(sshd.dir(), "client", KeyType::Ed25519, None)?;
    sshd.authorize(user::NOPW, &key)?;
    let ssh = OpenSsh::new(Some(&key))?;
    ssh.trust(&sshd)?;

    let out = ssh
        .command(user::NOPW, &sshd)
        .arg("id -un; echo $((6 * 7))")
        .output()?;
    assert_ok(&out, &sshd);
    assert_eq!(stdout(&out), "mshot-nopw\n42\n");
    assert!(
        sshd.log().contains("Accepted publickey for mshot-nopw"),
        "{}",
        sshd.log()
    );

    // The same key is not authorized for another user.
    let out = ssh.command(user::NOSUDO, &sshd).arg("true").output()?;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );

    // Nor is a key that was never added.
    let stranger = KeyPair::generate(sshd.dir(), "stranger", KeyType::Ed25519, None)?;
    let ssh2 = OpenSsh::new(Some(&stranger))?;
    ssh2.trust(&sshd)?;
    let out = ssh2.command(user::NOPW, &sshd).arg("true").output()?;
    assert!(!out.status.success(), "an unauthorized key logged in");
    Ok(())
}

#[test]
fn rsa_and_ecdsa_keys_and_root_login() -> anyhow::Result<()> {
    support::require!(Need::Root, Need::Sshd, Need::SshClient, Need::TestUsers);
    let sshd = Sshd::builder().host_key_type(KeyType::Ecdsa).start()?;
    assert!(
        sshd.known_hosts_line()
            .contains(" ecdsa-sha2-nistp256 AAAA"),
        "{}",
        sshd.known_hosts_line()
    );
    let rsa = KeyPair::generate(sshd.dir(), "rsa", KeyType::Rsa, None)?;
    let ecdsa = KeyPair::generate(sshd.dir(), "ecdsa", KeyType::Ecdsa, None)?;
    sshd.authorize("root", &rsa)?;
    sshd.authorize(user::NOPW, &ecdsa)?;

    let ssh = OpenSsh::new(Some(&rsa))?;
    ssh.trust(&sshd)?;
    let out = ssh.command("root", &sshd).arg("id -u").output()?;
    assert_ok(&out, &sshd);
    assert_eq!(stdout(&out), "0\n");

    let ssh = OpenSsh::new(Some(&ecdsa))?;
    ssh.trust(&sshd)?;
    let out = ssh
        .command(user::NOPW, &sshd)
        .arg("sudo -n id -u")
        .output()?;
    assert_ok(&out, &sshd);
    assert_eq!(stdout(&out), "0\n", "mshot-nopw has passwordless sudo");

    // PermitRootLogin no refuses even an authorized key.
    let no_root = Sshd::builder().permit_root_login("no").start()?;
    no_root.authorize("root", &rsa)?;
    let ssh = OpenSsh::new(Some(&rsa))?;
    ssh.trust(&no_root)?;
    let out = ssh.command("root", &no_root).arg("true").output()?;
    assert!(
        !out.status.success(),
        "root logged in despite PermitRootLogin no"
    );
    Ok(())
}

#[test]
fn passphrase_protects_generated_keys() -> anyhow::Result<()> {
    support::require!(Need::SshClient);
    let dir = tempfile::tempdir()?;
    let key = KeyPair::generate(dir.path(), "locked", KeyType::Ed25519, Some("open sesame"))?;
    let derive = |pass: &str| {
        Command::new("ssh-keygen")
            .args(["-y", "-P", pass, "-f"])
            .arg(&key.private)
            .output()
    };
    let out = derive("wrong")?;
    assert!(!out.status.success(), "a wrong passphrase opened the key");
    let out = derive("open sesame")?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with(&key.public_key),
        "{} vs {}",
        stdout(&out),
        key.public_key
    );
    Ok(())
}

#[test]
fn password_login_and_sudo_rights() -> anyhow::Result<()> {
    support::require!(Need::Root, Need::Sshd, Need::SshClient, Need::TestUsers);
    let sshd = Sshd::builder().password_auth(true).start()?;
    let ssh = OpenSsh::new(None)?;
    ssh.trust(&sshd)?;

    let out = ssh
        .password_command(user::PW, &sshd, user::PW_PASSWORD)?
        .arg(format!("id -un; sudo -n true 2>/dev/null || echo needs-password; printf '%s\\n' '{}' | sudo -S -p '' id -u", user::PW_PASSWORD))
        .output()?;
    assert_ok(&out, &sshd);
    assert_eq!(stdout(&out), "mshot-pw\nneeds-password\n0\n");
    assert!(
        sshd.log().contains("Accepted password for mshot-pw"),
        "{}",
        sshd.log()
    );

    let out = ssh
        .password_command(user::NOSUDO, &sshd, user::NOSUDO_PASSWORD)?
        .arg(format!(
            "printf '%s\\n' '{}' | sudo -S -p '' true",
            user::NOSUDO_PASSWORD
        ))
        .output()?;
    assert_eq!(stdout(&out), "");
    assert!(
        !out.status.success(),
        "mshot-nosudo ran sudo: {}",
        stderr(&out)
    );
    assert!(
        sshd.log().contains("Accepted password for mshot-nosudo"),
        "{}",
        sshd.log()
    );

    let out = ssh
        .password_command(user::PW, &sshd, "not-the-password")?
        .arg("true")
        .output()?;
    assert!(!out.status.success(), "a wrong password logged in");
    assert!(
        sshd.log().contains("Failed password for mshot-pw"),
        "{}",
        sshd.log()
    );

    // With password authentication off, the right password is not enough.
    let keys_only = Sshd::builder().start()?;
    ssh.trust(&keys_only)?;
    let out = ssh
        .password_command(user::PW, &keys_only, user::PW_PASSWORD)?
        .arg("true")
        .output()?;
    assert!(
        !out.status.success(),
        "password login with PasswordAuthentication no"
    );
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
    Ok(())
}

#[test]
fn changed_host_key_is_refused() -> anyhow::Result<()> {
    support::require!(Need::Root, Need::Sshd, Need::SshClient, Need::TestUsers);
    let mut sshd = Sshd::builder().start()?;
    let key = KeyPair::generate(sshd.dir(), "client", KeyType::Ed25519, None)?;
    sshd.authorize(user::NOPW, &key)?;
    let ssh = OpenSsh::new(Some(&key))?;
    ssh.trust(&sshd)?;
    assert_ok(&ssh.command(user::NOPW, &sshd).arg("true").output()?, &sshd);

    let (port, old_key) = (sshd.port(), sshd.host_public_key().to_string());
    sshd.rotate_host_key(KeyType::Ed25519)?;
    assert_eq!(sshd.port(), port);
    assert_ne!(sshd.host_public_key(), old_key);

    let out = ssh
        .command(user::NOPW, &sshd)
        .arg("echo should-not-run")
        .output()?;
    assert!(!out.status.success());
    assert_eq!(stdout(&out), "");
    assert!(
        stderr(&out).contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "{}",
        stderr(&out)
    );

    // An unknown host is refused too (StrictHostKeyChecking yes).
    ssh.forget_all()?;
    let out = ssh.command(user::NOPW, &sshd).arg("true").output()?;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Host key verification failed"),
        "{}",
        stderr(&out)
    );

    ssh.trust(&sshd)?;
    assert_ok(&ssh.command(user::NOPW, &sshd).arg("true").output()?, &sshd);
    Ok(())
}

#[test]
fn one_hop_jump_reaches_a_target_the_root_namespace_cannot() -> anyhow::Result<()> {
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::TestUsers,
        Need::Netns
    );
    let lab = JumpChain::start("smoke1", 1, |_, b| b)?;
    let key = KeyPair::generate(lab.target.dir(), "client", KeyType::Ed25519, None)?;
    lab.authorize(user::NOPW, &key)?;
    let ssh = OpenSsh::new(Some(&key))?;
    lab.append_known_hosts(ssh.known_hosts())?;

    assert!(
        cannot_connect(lab.target.addr()),
        "the root namespace reaches {}",
        lab.target.addr()
    );
    let out = ssh.command(user::NOPW, &lab.target).arg("true").output()?;
    assert!(
        !out.status.success(),
        "ssh reached the target without a jump"
    );

    let jumps = lab.proxy_jump(user::NOPW);
    let out = ssh
        .jump_command(user::NOPW, &jumps, &lab.target)
        .arg("ip -4 -o addr show")
        .output()?;
    assert_ok(&out, &lab.target);
    let addrs = stdout(&out);
    assert!(
        addrs.contains(&format!("inet {}/30", lab.target.ip())),
        "{addrs}"
    );
    assert!(
        !addrs.contains(&format!("inet {}/30", lab.jumps[0].ip())),
        "ran on the jump host: {addrs}"
    );
    // The target saw the jump host's address, not the root namespace's.
    let from_jump = format!(
        "Accepted publickey for mshot-nopw from {} ",
        lab.net.last().peer()
    );
    assert!(
        lab.target.log().contains(&from_jump),
        "{}",
        lab.target.log()
    );
    assert!(
        lab.jumps[0]
            .log()
            .contains("Accepted publickey for mshot-nopw"),
        "{}",
        lab.jumps[0].log()
    );
    Ok(())
}

#[test]
fn two_hop_jump_and_a_data_source_behind_it() -> anyhow::Result<()> {
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::TestUsers,
        Need::Netns
    );
    let lab = JumpChain::start("smoke2", 2, |_, b| b)?;
    let key = KeyPair::generate(lab.target.dir(), "client", KeyType::Ed25519, None)?;
    lab.authorize(user::NOPW, &key)?;
    let ssh = OpenSsh::new(Some(&key))?;
    lab.append_known_hosts(ssh.known_hosts())?;

    // Each namespace reaches only its neighbours.
    let target = lab.target.addr();
    assert!(
        lab.net.ns(0).run(|| cannot_connect(target))?,
        "jump 0 reaches the target directly"
    );
    assert!(
        lab.net.ns(1).run(|| !cannot_connect(target))?,
        "jump 1 cannot reach the target"
    );

    let only_first = format!(
        "{}@{}:{}",
        user::NOPW,
        lab.jumps[0].ip(),
        lab.jumps[0].port()
    );
    let out = ssh
        .jump_command(user::NOPW, &only_first, &lab.target)
        .arg("true")
        .output()?;
    assert!(
        !out.status.success(),
        "one jump was enough to reach the target"
    );

    let jumps = lab.proxy_jump(user::NOPW);
    let out = ssh
        .jump_command(user::NOPW, &jumps, &lab.target)
        .arg("ip -4 -o addr show")
        .output()?;
    assert_ok(&out, &lab.target);
    assert!(
        stdout(&out).contains(&format!("inet {}/30", lab.target.ip())),
        "{}",
        stdout(&out)
    );

    // 8 MiB from the target's own loopback, through both jumps (ssh -W).
    let len = 8 << 20;
    let source = DataSource::bind_in(
        lab.net.last(),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        Content::Pattern(len),
    )?;
    let out = ssh
        .jump_command(user::NOPW, &jumps, &lab.target)
        .arg("-W")
        .arg(source.addr().to_string())
        .stdout(Stdio::piped())
        .output()?;
    assert_ok(&out, &lab.target);
    assert_eq!(out.stdout.len() as u64, len);
    assert_eq!(pattern::first_mismatch(0, &out.stdout), None);
    assert_eq!(source.wait(Duration::from_secs(10))?, len);
    Ok(())
}

#[test]
fn data_source_streams_through_local_forward() -> anyhow::Result<()> {
    support::require!(Need::Root, Need::Sshd, Need::SshClient, Need::TestUsers);
    let len: u64 = 32 << 20;
    let source = DataSource::pattern(len)?;
    let sshd = Sshd::builder().start()?;
    let key = KeyPair::generate(sshd.dir(), "client", KeyType::Ed25519, None)?;
    sshd.authorize(user::NOPW, &key)?;
    let ssh = OpenSsh::new(Some(&key))?;
    ssh.trust(&sshd)?;

    let local = support::free_port(IpAddr::V4(Ipv4Addr::LOCALHOST))?;
    let mut forward = KillOnDrop(
        ssh.command(user::NOPW, &sshd)
            .args(["-N", "-o", "ExitOnForwardFailure=yes", "-L"])
            .arg(format!("127.0.0.1:{local}:{}", source.addr()))
            .stderr(Stdio::piped())
            .spawn()?,
    );
    // The forward listens once ssh has logged in; until then, refused.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match TcpStream::connect(("127.0.0.1", local)) {
            Ok(s) => break s,
            Err(e) => {
                if let Some(status) = forward.0.try_wait()? {
                    anyhow::bail!(
                        "ssh -L exited ({status}) before forwarding: {e}\n{}",
                        sshd.log()
                    );
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "ssh -L never listened on {local}: {e}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    let mut received = Vec::with_capacity(len as usize);
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.read_to_end(&mut received)?;
    assert_eq!(received.len() as u64, len);
    assert_eq!(pattern::first_mismatch(0, &received), None);
    assert_eq!(source.wait(Duration::from_secs(10))?, len);
    assert!(
        forward.wait_timeout(Duration::ZERO)?.is_none(),
        "ssh -L died"
    );
    Ok(())
}

#[test]
fn data_source_serves_the_pattern_once() -> anyhow::Result<()> {
    let source = DataSource::pattern(1_000_003)?;
    let mut received = Vec::new();
    TcpStream::connect(source.addr())?.read_to_end(&mut received)?;
    assert_eq!(received, pattern::bytes(1_000_003));
    // Offsets are absolute: a chunk checks where it stands, and not elsewhere.
    assert_eq!(pattern::first_mismatch(4096, &received[4096..8192]), None);
    assert_eq!(
        pattern::first_mismatch(4097, &received[4096..8192]),
        Some(4097)
    );
    let addr = source.addr();
    assert_eq!(source.wait(Duration::from_secs(5))?, 1_000_003);
    assert!(
        cannot_connect(addr),
        "the data source still listens after serving"
    );
    Ok(())
}

#[test]
fn data_source_serves_a_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("image.bin");
    std::fs::write(&path, b"EMiL\x01\x00\x00\x00 not really a LiME image")?;
    let source = DataSource::file(&path)?;
    let mut received = Vec::new();
    TcpStream::connect(source.addr())?.read_to_end(&mut received)?;
    assert_eq!(received, std::fs::read(&path)?);
    assert_eq!(source.wait(Duration::from_secs(5))?, received.len() as u64);
    Ok(())
}

#[test]
fn namespaces_are_isolated_and_cleaned_up() -> anyhow::Result<()> {
    support::require!(Need::Root, Need::Netns);
    let name;
    {
        let ns = support::NetNs::create("iso")?;
        name = ns.name().to_string();
        // The root namespace and the namespace see each other over the veth.
        let out = ns
            .command("ip")
            .args(["-4", "-o", "addr", "show"])
            .output()?;
        assert!(
            stdout(&out).contains(&format!("inet {}/30", ns.addr())),
            "{}",
            stdout(&out)
        );
        let listener = ns.run(|| std::net::TcpListener::bind((ns.addr(), 0)))??;
        assert!(
            !cannot_connect(listener.local_addr()?),
            "root cannot reach {}",
            ns.addr()
        );
        // Inside, only loopback and the link: nothing else is routed.
        let outside = std::net::SocketAddr::from((Ipv4Addr::new(10, 77, ns.slot(), 200), 9));
        assert!(ns.run(|| cannot_connect(outside))?);
    }
    let out = support::netns::ip().args(["netns", "list"]).output()?;
    assert!(!stdout(&out).contains(&name), "{name} was not deleted");
    Ok(())
}

/*!
The OpenSSH client, set up to trust only what a test says.

[`OpenSsh`] writes an `ssh_config` of its own (passed with `-F`, which `ssh`
also hands to the `ssh` it starts for each `-J` hop) with `BatchMode yes`,
`StrictHostKeyChecking yes`, a known_hosts file of its own and no global
one, and the one identity the test gives it. Nothing in `~/.ssh` or
`/etc/ssh/ssh_config` is read.
*/

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;

use super::keys::KeyPair;
use super::sshd::Sshd;

/// An `ssh` configuration in a temporary directory of its own.
#[derive(Debug)]
pub struct OpenSsh {
    dir: tempfile::TempDir,
    config: PathBuf,
    known_hosts: PathBuf,
}

impl OpenSsh {
    /// A client that offers `identity` (or no key at all) and trusts no
    /// host yet.
    pub fn new(identity: Option<&KeyPair>) -> anyhow::Result<OpenSsh> {
        let dir = tempfile::Builder::new().prefix("mshot-ssh-").tempdir()?;
        let config = dir.path().join("ssh_config");
        let known_hosts = dir.path().join("known_hosts");
        std::fs::write(&known_hosts, "")?;
        let mut c = String::new();
        let _ = writeln!(c, "Host *");
        let _ = writeln!(c, "  BatchMode yes");
        let _ = writeln!(c, "  StrictHostKeyChecking yes");
        let _ = writeln!(c, "  UserKnownHostsFile {}", known_hosts.display());
        let _ = writeln!(c, "  GlobalKnownHostsFile /dev/null");
        let _ = writeln!(c, "  CheckHostIP no");
        let _ = writeln!(c, "  UpdateHostKeys no");
        let _ = writeln!(c, "  ControlMaster no");
        let _ = writeln!(c, "  ConnectTimeout 10");
        let _ = writeln!(c, "  IdentitiesOnly yes");
        let _ = writeln!(c, "  IdentityAgent none");
        match identity {
            Some(key) => {
                let _ = writeln!(c, "  IdentityFile {}", key.private.display());
            }
            None => {
                let _ = writeln!(c, "  IdentityFile none");
            }
        }
        std::fs::write(&config, c)?;
        Ok(OpenSsh {
            dir,
            config,
            known_hosts,
        })
    }

    /// The config file, for `ssh -F`.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// The known_hosts file the client checks against.
    pub fn known_hosts(&self) -> &Path {
        &self.known_hosts
    }

    /// Trusts `sshd`'s current host key.
    pub fn trust(&self, sshd: &Sshd) -> anyhow::Result<()> {
        sshd.append_known_hosts(&self.known_hosts)
    }

    /// Forgets every host.
    pub fn forget_all(&self) -> anyhow::Result<()> {
        std::fs::write(&self.known_hosts, "").context("cannot empty known_hosts")
    }

    /// `ssh -F <config> -p <port> <user>@<ip>`; add options and the remote
    /// command with `.arg`. Standard input is /dev/null.
    pub fn command(&self, user: &str, sshd: &Sshd) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.arg("-F")
            .arg(&self.config)
            .arg("-p")
            .arg(sshd.port().to_string());
        cmd.arg(format!("{user}@{}", sshd.ip()));
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Like [`command`](Self::command), through `ssh -J <jumps>`, e.g. from
    /// [`JumpChain::proxy_jump`](super::JumpChain::proxy_jump).
    pub fn jump_command(&self, user: &str, jumps: &str, target: &Sshd) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.arg("-F")
            .arg(&self.config)
            .arg("-J")
            .arg(jumps)
            .arg("-p")
            .arg(target.port().to_string());
        cmd.arg(format!("{user}@{}", target.ip()));
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Like [`command`](Self::command), logging in with `password` only:
    /// `SSH_ASKPASS` names a script that prints it, and
    /// `SSH_ASKPASS_REQUIRE=force` makes ssh use it without a terminal.
    pub fn password_command(
        &self,
        user: &str,
        sshd: &Sshd,
        password: &str,
    ) -> anyhow::Result<Command> {
        let askpass = self.dir.path().join(format!("askpass-{}", askpass_id()));
        std::fs::write(
            &askpass,
            format!(
                "#!/bin/sh\nprintf '%s\\n' '{}'\n",
                password.replace('\'', r"'\''")
            ),
        )?;
        std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o700))?;
        let mut cmd = Command::new("ssh");
        cmd.arg("-F").arg(&self.config);
        cmd.args([
            "-o",
            "BatchMode=no",
            "-o",
            "PreferredAuthentications=password",
        ]);
        cmd.args([
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "NumberOfPasswordPrompts=1",
        ]);
        cmd.arg("-p")
            .arg(sshd.port().to_string())
            .arg(format!("{user}@{}", sshd.ip()));
        cmd.env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0");
        cmd.stdin(Stdio::null());
        Ok(cmd)
    }
}

fn askpass_id() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

//! Becoming root on the target: logged in as root, `sudo -n`, or sudo with
//! a password written to its stdin, as the policy allows.

use anyhow::bail;

use super::shell::Shell;
use super::{Privilege, SudoMode, commands};

pub async fn become_root(
    shell: &Shell<'_>,
    uid: u32,
    sudo: &SudoPolicy,
) -> anyhow::Result<Privilege> {
    match sudo.mode {
        SudoMode::Auto | SudoMode::Never if uid == 0 => return Ok(Privilege::Root),
        SudoMode::Never => bail!(
            "logged in as uid {uid}, not root, and sudo is set to never; log in as root, or allow sudo (sudo: auto, --sudo auto)"
        ),
        SudoMode::Auto | SudoMode::Always => {}
    }
    let out = shell.run_plain(commands::SUDO_NO_PASSWORD).await?;
    if out.success() {
        return Ok(Privilege::SudoNoPassword);
    }
    let no_password_reason = out.stderr_line();
    let Some(password) = shell.sudo_password else {
        bail!(
            "sudo refused without a password ({no_password_reason}); give one (--sudo-password, MSHOT_SUDO_PASSWORD, or sudo_password_env: in a fleet file), or log in as root"
        );
    };
    let mut stdin = password.expose().as_bytes().to_vec();
    stdin.push(b'\n');
    let out = shell
        .run_logged(
            commands::SUDO_WITH_PASSWORD,
            stdin,
            Some("sudo password (redacted)".into()),
        )
        .await?;
    if out.success() {
        return Ok(Privilege::SudoPassword);
    }
    bail!(
        "sudo refused the password from {}: {}; check that password and that the user may run sudo",
        sudo.password_from.as_deref().unwrap_or("the configuration"),
        if out.stderr_line().is_empty() {
            out.describe_status()
        } else {
            out.stderr_line()
        }
    )
}

/// How a capture becomes root: the mode, and where the sudo password came
/// from (a flag or variable name, never the value), so a refusal says which
/// secret to check.
#[derive(Clone, Debug, Default)]
pub struct SudoPolicy {
    pub mode: SudoMode,
    pub password_from: Option<String>,
}

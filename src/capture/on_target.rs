//! Steps of a capture that wait on the target: becoming root, and LiME
//! starting to listen.

use std::time::{Duration, Instant};

use anyhow::bail;

use super::SudoPolicy;
use super::cleanup::RemoteState;
use crate::target::shell::Shell;
use crate::target::{self, ListenState, Privilege, SudoMode, commands};

pub(super) async fn become_root(
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

pub(super) async fn wait_for_listener(
    shell: &Shell<'_>,
    state: &mut RemoteState,
    port: u16,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((command, _)) = &state.insmod
            && command.is_finished()
        {
            let Some((command, pending)) = state.insmod.take() else {
                unreachable!()
            };
            let out = command.wait().await?;
            pending.finish(shell.audit, Some(&out));
            state.module_loaded_by_us = false;
            bail!(
                "insmod failed ({}): {}; is the module built for this kernel, and are unsigned modules allowed?",
                out.describe_status(),
                out.stderr_line()
            );
        }
        let out = shell.run_plain(commands::TCP_SOCKETS).await?;
        match target::listen_state(&target::parse_proc_net_tcp(&out.stdout_text()), port) {
            ListenState::LoopbackOnly => return Ok(()),
            ListenState::Exposed(address) => {
                bail!(
                    "LiME listens on {address}:{port}, not only on loopback; refusing to read an exposed stream"
                )
            }
            ListenState::Nobody if Instant::now() > deadline => {
                bail!("LiME did not start listening on 127.0.0.1:{port} within 60 s")
            }
            ListenState::Nobody => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

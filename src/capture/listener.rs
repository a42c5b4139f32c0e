//! LiME starting to listen on the target.

use std::time::{Duration, Instant};

use anyhow::bail;

use super::cleanup::RemoteState;
use crate::target::shell::Shell;
use crate::target::{self, ListenState, commands};

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

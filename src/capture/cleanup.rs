//! What a capture has done on the target, and `cleanup`, which undoes it
//! on every path.

use std::time::{Duration, Instant};

use super::CaptureJob;
use crate::record::CleanupReport;
use crate::record::audit::AuditLog;
use crate::target::shell::{PendingAudit, Shell};
use crate::target::{self, Privilege, commands};
use crate::transport::{RunningCommand, Session};

/// What we have done on the target so far, so cleanup knows what to undo.
#[derive(Default)]
pub(super) struct RemoteState {
    pub(super) privilege: Option<Privilege>,
    pub(super) temp_dir: Option<String>,
    pub(super) port: Option<u16>,
    pub(super) insmod: Option<(RunningCommand, PendingAudit)>,
    pub(super) module_loaded_by_us: bool,
    /// The S3 destination; `capture` aborts its upload unless it completed.
    pub(super) s3: Option<crate::pipeline::sink::s3::Destination>,
}

/// Undoes what `run` did on the target, on every path. Reconnects if the
/// connection was lost, since a loaded module must not be left behind.
pub(super) async fn cleanup(
    job: &CaptureJob,
    session: Session,
    audit: &AuditLog,
    state: &mut RemoteState,
) -> CleanupReport {
    let mut report = CleanupReport::default();
    let Some(privilege) = state.privilege else {
        report.module_unloaded = true;
        report.temp_dir_removed = true;
        session.close().await;
        return report;
    };
    let reconnected = session.is_closed();
    let session = if reconnected {
        tracing::warn!("connection lost; reconnecting to clean up");
        match Session::connect(&job.route, &job.host_keys, &job.ssh).await {
            Ok(s) => s,
            Err(e) => {
                report.errors.push(format!(
                    "cannot reconnect to clean up ({e}); check the target by hand: lime module, {}",
                    state.temp_dir.as_deref().unwrap_or("no temp dir")
                ));
                return report;
            }
        }
    } else {
        session
    };
    let host = session.label().to_string();
    let shell = Shell {
        session: &session,
        audit,
        host: &host,
        sudo_password: job.sudo_password.as_ref(),
        privilege,
    };

    // A LiME that still waits for its client blocks in init and cannot be
    // removed: connect once and hang up, so init fails and the module goes away.
    if let Some((command, pending)) = state.insmod.take() {
        // With digest=sha256 LiME listens a second time, for the digest client,
        // once it has skipped the rest of the image: hang up on that one too.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !command.is_finished() && Instant::now() < deadline {
            if let Some(port) = state.port
                && let Ok(channel) = session.open_tcp("127.0.0.1", port).await
            {
                channel.close().await;
            }
            for _ in 0..10 {
                if command.is_finished() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        match tokio::time::timeout(Duration::from_secs(30), command.wait()).await {
            Ok(Ok(out)) => pending.finish(audit, Some(&out)),
            _ => pending.finish(audit, None),
        }
    }

    // After a reconnect the insmod handle died with the old connection and
    // tells nothing; ask the target instead, and hang up on LiME (its digest
    // listener, say) for as long as its init is still running.
    if reconnected
        && state.module_loaded_by_us
        && let Some(port) = state.port
    {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let initialising = shell
                .run_plain(commands::MODULES)
                .await
                .is_ok_and(|m| target::module_initialising(&m.stdout_text(), "lime"));
            if !initialising {
                break;
            }
            if let Ok(channel) = session.open_tcp("127.0.0.1", port).await {
                channel.close().await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    if state.module_loaded_by_us {
        let modules = shell.run_plain(commands::MODULES).await;
        let loaded = modules
            .as_ref()
            .map(|m| target::module_loaded(&m.stdout_text(), "lime"))
            .unwrap_or(true);
        if loaded {
            match shell.run_root(commands::RMMOD_LIME, &[], None).await {
                Ok(out) if out.success() => {}
                Ok(out) => report
                    .errors
                    .push(format!("rmmod lime failed: {}", out.stderr_line())),
                Err(e) => report.errors.push(format!("rmmod lime failed: {e}")),
            }
        }
        let still = shell
            .run_plain(commands::MODULES)
            .await
            .map(|m| target::module_loaded(&m.stdout_text(), "lime"))
            .unwrap_or(true);
        report.module_unloaded = !still;
        if still && report.errors.is_empty() {
            report.errors.push("the lime module is still loaded".into());
        }
    } else {
        report.module_unloaded = true;
    }

    match &state.temp_dir {
        Some(dir) => match shell.run_root(&commands::remove_dir(dir), &[], None).await {
            Ok(out) if out.success() => report.temp_dir_removed = true,
            Ok(out) => report
                .errors
                .push(format!("cannot remove {dir}: {}", out.stderr_line())),
            Err(e) => report.errors.push(format!("cannot remove {dir}: {e}")),
        },
        None => report.temp_dir_removed = true,
    }
    session.close().await;
    report
}

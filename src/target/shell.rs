//! `Shell`: runs commands on the target as the login user or as root, and
//! records every one in the audit log. The only place that adds sudo and feeds
//! the sudo password, so no other code can leak it into a command line.

use std::time::{Duration, Instant};

use anyhow::bail;
use jiff::Timestamp;

use crate::record::audit::{AuditEntry, AuditLog};
use crate::target::Privilege;
use crate::transport::{ExecOutput, RunningCommand, Session};
use crate::util::secret::Secret;

/// Runs commands on the target and records each in the audit log.
pub struct Shell<'a> {
    pub session: &'a Session,
    pub audit: &'a AuditLog,
    pub host: &'a str,
    pub sudo_password: Option<&'a Secret>,
    /// How `run_root` becomes root; plain commands ignore it.
    pub privilege: Privilege,
}

/// An audit entry for a command that is still running.
pub struct PendingAudit {
    host: String,
    command: String,
    /// What was written to its stdin, described.
    stdin: Option<String>,
    started: Timestamp,
    clock: Instant,
}

impl PendingAudit {
    pub fn finish(self, audit: &AuditLog, out: Option<&ExecOutput>) {
        audit.record(AuditEntry {
            host: self.host,
            started: self.started,
            duration_ms: self.clock.elapsed().as_millis() as u64,
            command: self.command,
            stdin: self.stdin,
            exit_status: out.and_then(|o| o.status),
            stderr: out.map(|o| o.stderr_line()).unwrap_or_default(),
        });
    }
}

const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

impl Shell<'_> {
    /// Runs a command as the login user.
    pub async fn run_plain(&self, command: &str) -> anyhow::Result<ExecOutput> {
        self.run_logged(command, Vec::new(), None).await
    }

    /// Runs a command as root (sudo as needed); `stdin_note` describes `stdin` for the audit.
    pub async fn run_root(
        &self,
        command: &str,
        stdin: &[u8],
        stdin_note: Option<String>,
    ) -> anyhow::Result<ExecOutput> {
        let (line, input, note) = self.as_root(command, stdin, stdin_note);
        self.run_logged(&line, input, note).await
    }

    pub async fn start_root(
        &self,
        command: &str,
    ) -> anyhow::Result<(RunningCommand, PendingAudit)> {
        let (line, input, _) = self.as_root(command, &[], None);
        let pending = self.pending(&line, None);
        let running = self.session.start(&line, input).await?;
        Ok((running, pending))
    }

    /// Starts a command as root whose stdout is read as it arrives.
    pub async fn start_root_stream(
        &self,
        command: &str,
    ) -> anyhow::Result<(
        tokio::sync::mpsc::Receiver<bytes::Bytes>,
        RunningCommand,
        PendingAudit,
    )> {
        let (line, input, _) = self.as_root(command, &[], None);
        let pending = self.pending(&line, None);
        let (stdout, running) = self.session.start_stream(&line, input).await?;
        Ok((stdout, running, pending))
    }

    /// Starts a command as root and hands over its stdin and stdout as one
    /// byte stream (a protocol spoken with a remote program: sftp-server).
    /// The sudo password, when needed, is written first.
    pub async fn open_root_duplex(
        &self,
        command: &str,
    ) -> anyhow::Result<(crate::transport::ExecStream, PendingAudit)> {
        let (line, input, note) = self.as_root(command, &[], None);
        let pending = self.pending(&line, note);
        let stream = self.session.open_exec(&line, input).await?;
        Ok((stream, pending))
    }

    /// The audit entry of a command started now, finished later.
    fn pending(&self, line: &str, stdin: Option<String>) -> PendingAudit {
        PendingAudit {
            host: self.host.to_string(),
            command: line.to_string(),
            stdin,
            started: Timestamp::now(),
            clock: Instant::now(),
        }
    }

    fn as_root(
        &self,
        command: &str,
        stdin: &[u8],
        note: Option<String>,
    ) -> (String, Vec<u8>, Option<String>) {
        let privilege = self.privilege;
        let line = privilege.wrap(command);
        if privilege == Privilege::SudoPassword
            && let Some(password) = self.sudo_password
        {
            let mut input = Vec::with_capacity(password.expose().len() + 1 + stdin.len());
            input.extend_from_slice(password.expose().as_bytes());
            input.push(b'\n');
            input.extend_from_slice(stdin);
            let note = Some(match note {
                Some(n) => format!("sudo password (redacted), then {n}"),
                None => "sudo password (redacted)".into(),
            });
            return (line, input, note);
        }
        (line, stdin.to_vec(), note)
    }

    pub async fn run_logged(
        &self,
        line: &str,
        stdin: Vec<u8>,
        note: Option<String>,
    ) -> anyhow::Result<ExecOutput> {
        let started = Timestamp::now();
        let clock = Instant::now();
        let result = tokio::time::timeout(COMMAND_TIMEOUT, self.session.run(line, stdin)).await;
        // One audit entry whatever happened: finished, failed, or timed out.
        let (exit_status, stderr) = match &result {
            Ok(Ok(out)) => (out.status, out.stderr_line()),
            Ok(Err(e)) => (None, e.to_string()),
            Err(_) => (
                None,
                format!("no answer within {} s", COMMAND_TIMEOUT.as_secs()),
            ),
        };
        self.audit.record(AuditEntry {
            host: self.host.to_string(),
            started,
            duration_ms: clock.elapsed().as_millis() as u64,
            command: line.to_string(),
            stdin: note,
            exit_status,
            stderr,
        });
        match result {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => bail!(
                "`{line}` did not finish within {} s",
                COMMAND_TIMEOUT.as_secs()
            ),
        }
    }
}

//! Remote commands: what one returned, and one still running.

use super::SshError;

/// Result of a remote command.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    /// None when the server closed the channel without an exit status (killed, dropped).
    pub status: Option<u32>,
    pub signal: Option<String>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The first line of stderr, sanitised, for one-line error messages.
    pub fn stderr_line(&self) -> String {
        let text = String::from_utf8_lossy(&self.stderr);
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("");
        crate::util::sanitize::one_line(line)
    }

    pub fn describe_status(&self) -> String {
        match (&self.status, &self.signal) {
            (Some(code), _) => format!("exit status {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            (None, None) => "no exit status (connection closed?)".to_string(),
        }
    }
}

/// A command started on the target; `wait` collects its output.
pub struct RunningCommand {
    pub(super) task: tokio::task::JoinHandle<Result<ExecOutput, russh::Error>>,
    pub(super) label: String,
}

impl RunningCommand {
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    pub async fn wait(self) -> Result<ExecOutput, SshError> {
        match self.task.await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(source)) => Err(SshError::Protocol {
                endpoint: self.label,
                source: Box::new(source),
            }),
            Err(_) => Err(SshError::Closed {
                endpoint: self.label,
            }),
        }
    }

    pub fn abort(&self) {
        self.task.abort();
    }
}

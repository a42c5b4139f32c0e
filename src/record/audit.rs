//! The audit log: every command mshot runs on a target, in order, with its
//! outcome. Secrets never appear: passwords travel on stdin, and stdin is
//! recorded only as a description.

use std::sync::{Arc, Mutex};

use jiff::Timestamp;

#[derive(Clone, Debug, serde::Serialize)]
pub struct AuditEntry {
    pub host: String,
    pub started: Timestamp,
    pub duration_ms: u64,
    /// The exact command line sent to the SSH server.
    pub command: String,
    /// What was written to the command's stdin (described, never the secret itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Exit status, or null if the command was still running or the channel closed.
    pub exit_status: Option<u32>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stderr: String,
}

/// Shared, append-only list of entries for one capture.
#[derive(Clone, Default)]
pub struct AuditLog(Arc<Mutex<Vec<AuditEntry>>>);

impl AuditLog {
    pub fn record(&self, entry: AuditEntry) {
        tracing::debug!(
            host = %entry.host,
            command = %entry.command,
            status = ?entry.exit_status,
            "remote command"
        );
        if let Ok(mut entries) = self.0.lock() {
            entries.push(entry);
        }
    }

    pub fn entries(&self) -> Vec<AuditEntry> {
        self.0.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

//! The end of a fleet run: one record per host, a summary table for people
//! and a JSON report for machines (same facts, plus paths).

use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

use super::config::HostPlan;
use crate::record::CleanupReport;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Image complete, target clean.
    Captured,
    /// `--dry-run`: connection, root and module transfer checked, target clean.
    DryRunOk,
    /// Nothing kept (the error says why); the target was cleaned.
    Failed,
    /// Stopped by Ctrl-C while running; the target was cleaned.
    Interrupted,
    /// Ctrl-C came before this host's turn.
    NotStarted,
    /// The image is complete, but something was left on the target.
    CleanupFailed,
    /// The image is complete and the target clean, but `analyze:` failed.
    AnalysisFailed,
    /// The image is in the bucket, kept, but no check proved it (exit 4).
    Unverified,
}

impl Status {
    pub fn is_success(self) -> bool {
        matches!(self, Status::Captured | Status::DryRunOk)
    }
    fn word(self) -> &'static str {
        match self {
            Status::Captured => "captured",
            Status::DryRunOk => "dry run ok",
            Status::Failed => "FAILED",
            Status::Interrupted => "INTERRUPTED",
            Status::NotStarted => "NOT STARTED",
            Status::CleanupFailed => "CLEANUP FAILED",
            Status::AnalysisFailed => "ANALYSIS FAILED",
            Status::Unverified => "S3 UNVERIFIED",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct HostReport {
    pub name: String,
    pub addr: String,
    pub port: u16,
    pub user: String,
    pub jump_hosts: Vec<String>,
    pub status: Status,
    pub error: Option<String>,
    pub kernel_release: Option<String>,
    /// `uname -m` of the host (x86_64, aarch64).
    pub machine: Option<String>,
    /// How the image was taken (lime or kcore), as the manifest says.
    pub method: Option<crate::pipeline::source::Used>,
    pub bytes: Option<u64>,
    pub sha256: Option<String>,
    pub started: Option<Timestamp>,
    pub finished: Option<Timestamp>,
    pub duration_seconds: f64,
    pub image: Option<PathBuf>,
    /// `s3://bucket/key` of the completed object, when uploaded.
    pub s3: Option<String>,
    pub manifest: Option<PathBuf>,
    pub analysis: Vec<PathBuf>,
    /// Triage's verdict and finding count, when `analyze:` ran triage.
    pub verdict: Option<String>,
    pub findings: Option<usize>,
    pub log: Option<PathBuf>,
    pub cleanup: Option<CleanupReport>,
}

impl HostReport {
    pub fn new(host: &HostPlan) -> HostReport {
        let target = host.job.target();
        HostReport {
            name: host.name.clone(),
            addr: target.host.clone(),
            port: target.port,
            user: target.user.clone(),
            jump_hosts: host.job.route[..host.job.route.len() - 1]
                .iter()
                .map(|e| e.to_string())
                .collect(),
            status: Status::Failed,
            error: None,
            kernel_release: None,
            machine: None,
            method: None,
            bytes: None,
            sha256: None,
            started: None,
            finished: None,
            duration_seconds: 0.0,
            image: None,
            s3: None,
            manifest: None,
            analysis: Vec::new(),
            verdict: None,
            findings: None,
            log: None,
            cleanup: None,
        }
    }

    /// `captured 512.0 MiB in 31.2 s, sha256 ab12...` or the error.
    pub fn one_line(&self) -> String {
        match (&self.error, self.bytes) {
            (Some(error), _) => format!("{}: {error}", self.status.word()),
            (None, Some(bytes)) => format!(
                "{} {} in {:.1} s, sha256 {}",
                self.status.word(),
                human_bytes(bytes),
                self.duration_seconds,
                self.sha256.as_deref().unwrap_or("?")
            ),
            (None, None) => format!("{} in {:.1} s", self.status.word(), self.duration_seconds),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub hosts: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub tool_version: &'static str,
    pub config: PathBuf,
    pub started: Timestamp,
    pub finished: Timestamp,
    pub duration_seconds: f64,
    pub workers: usize,
    pub interrupted: bool,
    pub summary: Summary,
    pub hosts: Vec<HostReport>,
}

impl Report {
    pub fn new(
        config: &Path,
        started: Timestamp,
        elapsed: Duration,
        workers: usize,
        interrupted: bool,
        hosts: Vec<HostReport>,
    ) -> Report {
        let succeeded = hosts.iter().filter(|h| h.status.is_success()).count();
        Report {
            tool: "mshot",
            tool_version: env!("CARGO_PKG_VERSION"),
            config: config.to_path_buf(),
            started,
            finished: Timestamp::now(),
            duration_seconds: elapsed.as_secs_f64(),
            workers,
            interrupted,
            summary: Summary {
                hosts: hosts.len(),
                succeeded,
                failed: hosts.len() - succeeded,
                bytes: hosts.iter().filter_map(|h| h.bytes).sum(),
            },
            hosts,
        }
    }

    pub fn all_succeeded(&self) -> bool {
        self.hosts.iter().all(|h| h.status.is_success())
    }

    /// True when triage reported findings on some host.
    pub fn any_findings(&self) -> bool {
        self.hosts.iter().any(|h| h.findings.is_some_and(|n| n > 0))
    }

    /// Every host that did not succeed has its image kept but unverified.
    pub fn only_unverified(&self) -> bool {
        (self.hosts.iter()).all(|h| h.status.is_success() || h.status == Status::Unverified)
    }

    pub fn any_cleanup_failed(&self) -> bool {
        self.hosts.iter().any(|h| {
            h.status == Status::CleanupFailed
                || h.cleanup.as_ref().is_some_and(|c| !c.errors.is_empty())
                || h.error
                    .as_deref()
                    .is_some_and(|e| e.contains("cleanup failed"))
        })
    }

    /// Writes the JSON report whole or not at all (temp file, then rename).
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        use anyhow::Context;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let temp = path.with_extension("json.part");
        let text = serde_json::to_vec_pretty(self)?;
        std::fs::write(&temp, text)
            .with_context(|| format!("cannot write the report {}", temp.display()))?;
        std::fs::rename(&temp, path)
            .with_context(|| format!("cannot write the report {}", path.display()))?;
        Ok(())
    }

    /// The summary table: host, machine (when a host stated one), result,
    /// size, duration, SHA-256 (and triage's verdict) or the error.
    pub fn table(&self) -> String {
        let machines = self.hosts.iter().any(|h| h.machine.is_some());
        let verdicts = self.hosts.iter().any(|h| h.verdict.is_some());
        let last = if verdicts {
            "SHA-256  VERDICT / ERROR"
        } else {
            "SHA-256 / ERROR"
        };
        let mut header = vec!["HOST", "MACHINE", "RESULT", "SIZE", "TIME", last];
        if !machines {
            header.remove(1);
        }
        let rows: Vec<Vec<String>> = self
            .hosts
            .iter()
            .map(|h| {
                let mut row = vec![
                    h.name.clone(),
                    h.machine.clone().unwrap_or_else(|| "-".into()),
                    h.status.word().to_string(),
                    h.bytes.map(human_bytes).unwrap_or_else(|| "-".into()),
                    format!("{:.1} s", h.duration_seconds),
                    match (&h.error, &h.sha256, &h.verdict) {
                        (Some(e), _, _) => e.clone(),
                        (None, Some(sha), Some(v)) => format!("{sha}  triage: {v}"),
                        (None, Some(sha), None) => sha.clone(),
                        (None, None, Some(v)) => format!("triage: {v}"),
                        (None, None, None) => "-".into(),
                    },
                ];
                if !machines {
                    row.remove(1);
                }
                row
            })
            .collect();
        let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let mut line = |cells: &[&str]| {
            for (i, cell) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    out.push_str(cell);
                } else {
                    let w = widths.get(i).copied().unwrap_or(0);
                    out.push_str(&format!("{cell:<w$}  "));
                }
            }
            out.push('\n');
        };
        line(&header);
        for row in &rows {
            let cells: Vec<&str> = row.iter().map(String::as_str).collect();
            line(&cells);
        }
        out.push_str(&format!(
            "{} of {} hosts succeeded, {} in {:.1} s{}\n",
            self.summary.succeeded,
            self.summary.hosts,
            human_bytes(self.summary.bytes),
            self.duration_seconds,
            if self.interrupted {
                " (interrupted by Ctrl-C)"
            } else {
                ""
            }
        ));
        out
    }
}

fn human_bytes(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / 1048576.0)
    }
}

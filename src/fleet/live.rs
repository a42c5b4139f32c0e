//! `mshot -c FILE --live PLUGIN...`: live analysis of every host of a fleet
//! file, with the fleet's workers, then the rows merged with a host column
//! and stacked: the values only a few hosts have.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::config::FleetPlan;
use crate::analysis::analysis_json_rows;
use crate::analysis::stack::{self, Outlier};
use crate::live::{LiveJob, LiveOutcome, analyze};

/// How a fleet's live analysis runs.
pub struct LiveFleet {
    pub plugins: Vec<String>,
    pub workers: usize,
    pub deadline: Duration,
    pub cache_dir: Option<PathBuf>,
}

/// One host's result.
pub struct HostLive {
    pub name: String,
    pub outcome: Result<LiveOutcome, String>,
}

/// Runs every host, at most `workers` at once, in file order; each line of
/// progress as a host ends.
pub async fn run(plan: FleetPlan, options: &LiveFleet, cancel: CancellationToken) -> Vec<HostLive> {
    let semaphore = Arc::new(Semaphore::new(options.workers.max(1)));
    let mut tasks = Vec::new();
    for host in plan.hosts {
        let job = LiveJob {
            route: host.job.route.clone(),
            host_keys: host.job.host_keys.clone(),
            ssh: host.job.ssh.clone(),
            sudo_password: host.job.sudo_password.clone(),
            sudo: host.job.sudo.clone(),
            plugins: options.plugins.clone(),
            threads: false,
            pids: Vec::new(),
            deadline: options.deadline,
            cache_dir: options.cache_dir.clone(),
        };
        let semaphore = semaphore.clone();
        let cancel = cancel.clone();
        let name = host.name.clone();
        tasks.push((
            host.name,
            tokio::spawn(async move {
                let _slot = semaphore.acquire_owned().await;
                let outcome = tokio::select! {
                    r = analyze(&job) => r.map_err(|e| super::error_line(&e)),
                    _ = cancel.cancelled() => Err("interrupted".to_string()),
                };
                match &outcome {
                    Ok(o) if o.failed.is_empty() => eprintln!(
                        "{name}: done: {:.1} MiB of /proc/kcore read ({:.2}% of RAM), {:.1} s",
                        o.kcore_bytes as f64 / 1048576.0,
                        100.0 * o.kcore_bytes as f64 / o.ram_bytes.max(1) as f64,
                        o.seconds
                    ),
                    Ok(o) => eprintln!(
                        "{name}: incomplete: {}",
                        o.failed
                            .iter()
                            .map(|(p, why)| format!("{p}: {why}"))
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                    Err(e) => eprintln!("{name}: FAILED: {e}"),
                }
                outcome
            }),
        ));
    }
    let mut hosts = Vec::new();
    for (name, task) in tasks {
        let outcome = task
            .await
            .unwrap_or_else(|e| Err(format!("internal error ({e}); please report it")));
        hosts.push(HostLive { name, outcome });
    }
    hosts
}

/// The values few hosts have, over the hosts whose plugins all ran.
pub fn outliers(hosts: &[HostLive]) -> Vec<Outlier> {
    let complete: Vec<(String, &crate::analysis::Analysis)> = hosts
        .iter()
        .filter_map(|h| match &h.outcome {
            Ok(o) if o.failed.is_empty() => Some((h.name.clone(), &o.analysis)),
            _ => None,
        })
        .collect();
    stack::outliers(&complete)
}

/// The report: each host's status and cost, every plugin's rows with a
/// `host` column, the outliers, and each host's audit of remote commands.
pub fn write_report(path: &Path, hosts: &[HostLive], outliers: &[Outlier]) -> anyhow::Result<()> {
    let mut merged = serde_json::Map::new();
    let mut status = Vec::new();
    for h in hosts {
        match &h.outcome {
            Ok(o) => {
                for (plugin, rows) in analysis_json_rows(&o.analysis) {
                    let slot = merged
                        .entry(plugin)
                        .or_insert_with(|| serde_json::Value::Array(Vec::new()));
                    if let serde_json::Value::Array(all) = slot {
                        for mut row in rows {
                            if let serde_json::Value::Object(fields) = &mut row {
                                fields.insert("host".into(), h.name.clone().into());
                            }
                            all.push(row);
                        }
                    }
                }
                status.push(serde_json::json!({
                    "name": h.name,
                    "status": if o.failed.is_empty() { "ok" } else { "incomplete" },
                    "failed": o.failed.iter().map(|(p, why)| serde_json::json!({"plugin": p, "error": why})).collect::<Vec<_>>(),
                    "kernel_release": o.kernel_release,
                    "seconds": o.seconds,
                    "ram_bytes": o.ram_bytes,
                    "kcore_bytes_read": o.kcore_bytes,
                    "material_bytes": o.material_bytes,
                    "verdict": o.analysis.verdict().map(|v| v.text()),
                    "audit": o.audit,
                }));
            }
            Err(e) => {
                status.push(serde_json::json!({"name": h.name, "status": "failed", "error": e}))
            }
        }
    }
    let report = serde_json::json!({
        "tool": "mshot",
        "tool_version": env!("CARGO_PKG_VERSION"),
        "mode": "live",
        "hosts": status,
        "outliers": outliers,
        "rows": merged,
    });
    let mut text = serde_json::to_vec_pretty(&report)?;
    text.push(b'\n');
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    crate::util::fs::write_small_file(path, &text)?;
    Ok(())
}

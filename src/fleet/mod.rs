//! Fleet capture (`mshot -c fleet.yaml`): many hosts at once.
//!
//! `config` validates the whole file and builds one `CaptureJob` per host
//! before anything connects. `run` then hands out worker slots (a semaphore)
//! in file order and starts each host as a tokio task once it holds one, so
//! hosts start in the order the file lists them. A host's failure is its own: it
//! is recorded and the others go on. Cancelling the token (Ctrl-C) stops
//! hosts that have not started and interrupts the running ones, whose
//! `capture::capture` still unloads LiME and removes its files before
//! returning, so `run` returns only once every target is clean.
//!
//! Display: a `MultiProgress` with one line per running host and an overall
//! line on a terminal; plain periodic log lines otherwise. The end is a
//! summary table (`report::table`) and a JSON report (`report::Report`).

pub mod config;
pub mod flags;
pub mod live;
pub mod report;
pub mod yaml;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use jiff::Timestamp;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::capture::{self, CaptureJob};
use crate::util::progress::CaptureProgress;
use config::{AnalyzeSpec, FleetPlan, HostPlan};
use report::{HostReport, Report, Status};

/// How a fleet run behaves beyond the file itself.
pub struct FleetOptions {
    pub workers: usize,
    pub log_dir: Option<PathBuf>,
    pub log_prefix: Option<String>,
    /// Benchmark aid: stream a LiME-format source at this port (as each target
    /// sees it) instead of capturing with LiME.
    pub bench_source_port: Option<u16>,
    /// Force plain log lines even on a terminal (tests, `TERM=dumb`).
    pub plain: bool,
}

/// Counters shared by the hosts and the overall line.
#[derive(Default)]
struct Totals {
    bytes: Arc<AtomicU64>,
    running: AtomicUsize,
    ok: AtomicUsize,
    failed: AtomicUsize,
}

/// Captures every host of `plan`; returns once all are finished and clean.
pub async fn run(plan: FleetPlan, options: &FleetOptions, cancel: CancellationToken) -> Report {
    let started = Timestamp::now();
    let clock = Instant::now();
    let host_count = plan.hosts.len();
    let semaphore = Arc::new(Semaphore::new(options.workers.max(1)));
    let totals = Arc::new(Totals::default());
    let width = plan.hosts.iter().map(|h| h.name.len()).max().unwrap_or(0);

    use std::io::IsTerminal;
    let multi = (!options.plain && std::io::stderr().is_terminal()).then(|| {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        crate::util::progress::set_multi(multi.clone());
        multi
    });
    let overall = multi.as_ref().map(|m| {
        let bar = m.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(250));
        bar
    });
    let ticker = tokio::spawn(overall_ticker(
        overall.clone(),
        totals.clone(),
        host_count,
        clock,
    ));

    let analyze = Arc::new(plan.analyze.clone());
    let mut tasks = Vec::with_capacity(host_count);
    for host in plan.hosts {
        let name = host.name.clone();
        let mut summary = HostReport::new(&host);
        // Slots go out here, in file order: were each task to wait for its
        // own, the runtime could start the last host first.
        let permit = tokio::select! {
            permit = semaphore.clone().acquire_owned() => permit.ok(),
            _ = cancel.cancelled() => None,
        };
        let Some(permit) = permit.filter(|_| !cancel.is_cancelled()) else {
            summary.status = Status::NotStarted;
            summary.error = Some("not started: interrupted by Ctrl-C".into());
            tasks.push((name, summary, None));
            continue;
        };
        let display = multi.clone().zip(overall.clone());
        let context = HostContext {
            cancel: cancel.clone(),
            totals: totals.clone(),
            analyze: analyze.clone(),
            log_dir: options.log_dir.clone(),
            log_prefix: options.log_prefix.clone(),
            bench_source_port: options.bench_source_port,
            label: format!("{:width$}", host.name),
            display,
        };
        tasks.push((
            name,
            summary,
            Some(tokio::spawn(run_host(host, context, permit))),
        ));
    }

    let mut hosts = Vec::with_capacity(tasks.len());
    for (name, mut fallback, task) in tasks {
        let Some(task) = task else {
            hosts.push(fallback);
            continue;
        };
        match task.await {
            Ok(report) => hosts.push(report),
            Err(e) => {
                // A panic in one host's task must not lose the others' results.
                fallback.status = Status::Failed;
                fallback.error = Some(format!("internal error in mshot ({e}); please report it"));
                tracing::error!("{name}: internal error: {e}");
                hosts.push(fallback);
            }
        }
    }
    ticker.abort();
    if let Some(bar) = &overall {
        bar.finish_and_clear();
    }
    Report::new(
        &plan.file,
        started,
        clock.elapsed(),
        options.workers,
        cancel.is_cancelled(),
        hosts,
    )
}

struct HostContext {
    cancel: CancellationToken,
    totals: Arc<Totals>,
    analyze: Arc<Option<AnalyzeSpec>>,
    log_dir: Option<PathBuf>,
    log_prefix: Option<String>,
    bench_source_port: Option<u16>,
    label: String,
    /// The MultiProgress and its overall line, on a terminal.
    display: Option<(MultiProgress, ProgressBar)>,
}

/// Captures one host while holding its worker slot (`permit`).
async fn run_host(
    host: HostPlan,
    context: HostContext,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> HostReport {
    let mut report = HostReport::new(&host);
    context.totals.running.fetch_add(1, Ordering::Relaxed);
    let log_path = context
        .log_dir
        .as_ref()
        .map(|dir| host_log_path(dir, context.log_prefix.as_deref(), &host.name));
    let log_file = log_path.as_ref().and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| tracing::warn!("{}: cannot open its log {}: {e}", host.name, p.display()))
            .ok()
    });
    // The host's line appears when it starts, above the overall line.
    let bar = context
        .display
        .as_ref()
        .map(|(multi, overall)| multi.insert_before(overall, ProgressBar::new_spinner()));
    let progress = CaptureProgress::with_bar(&context.label, bar.clone())
        .with_log(log_file, context.totals.bytes.clone());
    progress.log_line(&format!(
        "host {} (route: {})",
        host.name,
        host.job
            .route
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(" -> ")
    ));
    report.log = log_path.clone();
    report.started = Some(Timestamp::now());
    let clock = Instant::now();

    match context.bench_source_port {
        Some(port) => {
            tokio::select! {
                _ = bench_host(&host.job, port, &progress, &mut report) => {}
                _ = context.cancel.cancelled() => {
                    // No module, nothing on the target: stopping is all there is to do.
                    report.status = Status::Failed;
                    report.error = Some("interrupted by Ctrl-C".into());
                }
            }
        }
        None => capture_host(&host.job, &progress, &context, &mut report).await,
    }
    if report.status == Status::Failed && context.cancel.is_cancelled() {
        report.status = Status::Interrupted;
    }
    report.duration_seconds = clock.elapsed().as_secs_f64();
    report.finished = Some(Timestamp::now());
    progress.finish();
    drop(permit);

    context.totals.running.fetch_sub(1, Ordering::Relaxed);
    if report.status.is_success() {
        context.totals.ok.fetch_add(1, Ordering::Relaxed);
    } else {
        context.totals.failed.fetch_add(1, Ordering::Relaxed);
    }
    let line = report.one_line();
    progress.log_line(&line);
    if let Some(manifest) = &report.manifest {
        append_audit(&progress, manifest);
    }
    let line = format!("{}: {line}", host.name);
    match (&context.display, &bar) {
        (Some((multi, _)), Some(bar)) => {
            multi.remove(bar);
            let _ = multi.println(line);
        }
        _ => eprintln!("{line}"),
    }
    report
}

async fn capture_host(
    job: &CaptureJob,
    progress: &CaptureProgress,
    context: &HostContext,
    report: &mut HostReport,
) {
    let manifest_path = crate::record::manifest_path_for(&job.image_path);
    match capture::capture(job, progress, &context.cancel).await {
        Ok(outcome) => {
            report.kernel_release = Some(outcome.manifest.kernel_release.clone());
            report.machine = Some(outcome.manifest.machine.clone());
            report.method = outcome.manifest.source.method;
            report.cleanup = Some(outcome.manifest.cleanup.clone());
            report.manifest = outcome.manifest_path.clone();
            // With a bucket alone there is no local path, but there is an image.
            match &outcome.manifest.image {
                Some(image) => {
                    report.status = Status::Captured;
                    report.image = outcome.image_path.clone();
                    report.bytes = Some(image.bytes);
                    report.sha256 = Some(image.sha256.clone());
                }
                None => report.status = Status::DryRunOk,
            }
            report.s3 = (outcome.manifest.s3.as_ref())
                .filter(|s3| s3.completed)
                .map(|s3| s3.uri.clone());
            if let Some(why) = outcome.manifest.s3.as_ref().and_then(|s3| s3.unverified()) {
                report.status = Status::Unverified;
                report.error = Some(why);
            }
            // Still a capture (see `s3::material`), but the row says what is missing.
            if let Some(problem) =
                (outcome.manifest.s3.as_ref()).and_then(|s3| s3.material.as_ref()?.problem())
            {
                report.error = Some(format!(
                    "the image is complete in the bucket, but {problem}"
                ));
            }
            if outcome.cleanup_failed {
                report.status = Status::CleanupFailed;
                report.error = Some(format!(
                    "cleanup failed: {}",
                    outcome.manifest.cleanup.errors.join("; ")
                ));
                return;
            }
            if let (Some(image), Some(spec)) = (&outcome.image_path, context.analyze.as_ref())
                && !spec.plugins.is_empty()
            {
                progress.phase("analysing");
                match analyze(image, spec).await {
                    Ok((files, verdict)) => {
                        report.analysis = files;
                        report.findings = verdict.map(|v| v.findings);
                        report.verdict = verdict.map(|v| v.text());
                    }
                    Err(e) => {
                        report.status = Status::AnalysisFailed;
                        report.error = Some(crate::util::sanitize::one_line(&format!(
                            "the image is complete, but analysis failed: {e:#}"
                        )));
                    }
                }
            }
        }
        Err(e) => {
            report.status = Status::Failed;
            report.error = Some(error_line(&e));
            // A run that connected left a manifest with the audit, even on failure.
            if manifest_path.exists() {
                report.manifest = Some(manifest_path);
            }
        }
    }
}

async fn bench_host(
    job: &CaptureJob,
    port: u16,
    progress: &CaptureProgress,
    report: &mut HostReport,
) {
    progress.phase("capturing (bench source)");
    match capture::bench_receive(job, port, progress).await {
        Ok((received, s3)) => {
            report.status = Status::Captured;
            if let Some(why) = s3.as_ref().and_then(|s3| s3.unverified()) {
                report.status = Status::Unverified;
                report.error = Some(why);
            }
            report.image = job.local_image.then(|| job.image_path.clone());
            report.bytes = Some(received.bytes);
            report.sha256 = Some(received.sha256);
            // bench_receive completes the upload or fails; the key is the
            // one `Destination::prepare` used.
            report.s3 = job.s3.as_ref().map(|spec| {
                let name = job
                    .image_path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                format!(
                    "s3://{}/{}",
                    spec.bucket,
                    spec.image_key(&job.target().host, &name)
                )
            });
        }
        Err(e) => {
            report.status = Status::Failed;
            report.error = Some(error_line(&e));
        }
    }
}

async fn analyze(
    image: &Path,
    spec: &AnalyzeSpec,
) -> anyhow::Result<(Vec<PathBuf>, Option<memimage::plugins::integrity::Verdict>)> {
    let image = image.to_path_buf();
    let plugins = spec.plugins.clone();
    let profile = spec.profile.clone();
    let (analysis, written) = tokio::task::spawn_blocking(move || {
        crate::analysis::analyze_and_store(&image, &plugins, profile.as_deref())
    })
    .await??;
    Ok((written, analysis.verdict()))
}

/// The error chain on one capped, printable line.
fn error_line(error: &anyhow::Error) -> String {
    crate::util::sanitize::one_line(&crate::util::sanitize::error_chain(error))
}

/// The audit of remote commands, from the manifest, into the host's log.
fn append_audit(progress: &CaptureProgress, manifest: &Path) {
    let Ok(bytes) = std::fs::read(manifest) else {
        return;
    };
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return;
    };
    progress.log_line(&format!(
        "audit of remote commands ({})",
        manifest.display()
    ));
    for entry in value["audit"].as_array().into_iter().flatten() {
        progress.log_line(&format!(
            "  [{}] exit={} {}{}",
            entry["started"].as_str().unwrap_or(""),
            entry["exit_status"],
            entry["command"].as_str().unwrap_or(""),
            entry["stdin"]
                .as_str()
                .map(|s| format!(" <stdin: {s}>"))
                .unwrap_or_default()
        ));
    }
}

/// `<dir>/<prefix>-<name>.log`, the name made safe for a file name.
pub fn host_log_path(dir: &Path, prefix: Option<&str>, name: &str) -> PathBuf {
    let safe = crate::util::sanitize::file_name_part(name);
    match prefix {
        Some(p) => dir.join(format!("{p}-{safe}.log")),
        None => dir.join(format!("{safe}.log")),
    }
}

/// The overall line: done/failed/running, bytes and rate; every 30 s on
/// stderr when there is no terminal (at any verbosity: it is progress, and a
/// fleet of big hosts can run for minutes between two hosts' results).
async fn overall_ticker(
    bar: Option<ProgressBar>,
    totals: Arc<Totals>,
    hosts: usize,
    clock: Instant,
) {
    let period = if bar.is_some() {
        Duration::from_millis(250)
    } else {
        Duration::from_secs(30)
    };
    let mut interval = tokio::time::interval(period);
    interval.tick().await;
    loop {
        interval.tick().await;
        let ok = totals.ok.load(Ordering::Relaxed);
        let failed = totals.failed.load(Ordering::Relaxed);
        let running = totals.running.load(Ordering::Relaxed);
        let bytes = totals.bytes.load(Ordering::Relaxed);
        let secs = clock.elapsed().as_secs_f64().max(0.001);
        let line = format!(
            "fleet: {}/{hosts} done ({ok} ok, {failed} failed), {running} running, {} waiting; {:.2} GiB at {:.1} MiB/s",
            ok + failed,
            hosts.saturating_sub(ok + failed + running),
            bytes as f64 / (1u64 << 30) as f64,
            bytes as f64 / 1048576.0 / secs
        );
        match &bar {
            Some(bar) => bar.set_message(line),
            None => eprintln!("{line}"),
        }
    }
}

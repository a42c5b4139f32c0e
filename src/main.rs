//! `mshot`: parse flags, run, turn the outcome into an exit code.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use mshot::cli::{CaptureArgs, Cli, Command};
use mshot::progress::CaptureProgress;

/// Exit codes, documented in docs/exit-codes.md.
mod exit {
    pub const OK: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const CLEANUP_FAILED: u8 = 3;
    /// The image is in the bucket, kept, but no check proved it (`s3::verify`).
    pub const UNVERIFIED: u8 = 4;
    /// The run succeeded and triage reported findings.
    pub const FINDINGS: u8 = 5;
}

/// The exit code of a successful run whose analysis may hold triage findings.
fn verdict_code(a: &mshot::analyze_cmd::Analysis) -> u8 {
    match a.verdict() {
        Some(v) if v.findings > 0 => exit::FINDINGS,
        _ => exit::OK,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (args, bench_port) = match &cli.command {
        Some(Command::Analyze(args)) => {
            return match mshot::analyze_cmd::run(args) {
                Ok(analysis) => ExitCode::from(verdict_code(&analysis)),
                Err(e) => {
                    eprintln!("mshot: {e:#}");
                    let usage = e.downcast_ref::<mshot::analyze_cmd::UsageError>().is_some();
                    ExitCode::from(if usage { exit::USAGE } else { exit::FAILED })
                }
            };
        }
        Some(Command::Profile(args)) => {
            return match mshot::profile_cmd::run(args) {
                Ok(()) => ExitCode::from(exit::OK),
                Err(e) => {
                    eprintln!("mshot: {e:#}");
                    ExitCode::from(exit::FAILED)
                }
            };
        }
        Some(Command::Repo(args)) => {
            return match mshot::repository::cmd::run(args) {
                Ok(()) => ExitCode::from(exit::OK),
                Err(e) => {
                    eprintln!("mshot: {e:#}");
                    ExitCode::from(exit::FAILED)
                }
            };
        }
        Some(Command::Upload(args)) => return ExitCode::from(run_upload(args)),
        Some(Command::Capture(args)) => (args.clone(), None),
        Some(Command::BenchReceive {
            capture,
            source_port,
        }) => (capture.clone(), Some(*source_port)),
        None => (cli.capture.clone(), None),
    };
    if let Some(file) = &args.config {
        return ExitCode::from(run_fleet(&args, file));
    }
    let _log_guard = init_logging(&args);
    // A capture into a local file runs on one worker: russh's session, the
    // stream reader and SHA-256 then pass each packet along on one thread
    // instead of waking another, which cut mshot's CPU per GiB by a sixth
    // on two cores (benches/tunnel.sh). S3 part uploads get every core.
    let workers = args.s3.bucket.is_none().then_some(1);
    let Some(runtime) = build_runtime(workers) else {
        return ExitCode::from(exit::FAILED);
    };
    // The capture runs as a task on the runtime's workers, beside russh's
    // session task, rather than on this thread: each SSH packet then passes
    // between them on one worker instead of waking this thread, which cut
    // the capture's context switches threefold and its CPU by a sixth.
    let capture = runtime.spawn(async move {
        match bench_port {
            Some(port) => run_bench_receive(&args, port).await,
            None => run_capture(&args).await,
        }
    });
    let code = runtime.block_on(capture).unwrap_or_else(|e| {
        eprintln!("mshot: internal error ({e}); please report it");
        exit::FAILED
    });
    ExitCode::from(code)
}

async fn run_bench_receive(args: &CaptureArgs, port: u16) -> u8 {
    let job = match mshot::config::bench_job(args) {
        Ok(job) => job,
        Err(e) => {
            eprintln!("mshot: {e:#}");
            return exit::USAGE;
        }
    };
    let progress = CaptureProgress::new(&job.target().to_string());
    let clock = std::time::Instant::now();
    match mshot::capture::bench_receive(&job, port, &progress).await {
        Ok((received, s3)) => {
            progress.finish();
            let secs = clock.elapsed().as_secs_f64();
            println!(
                "bytes={} seconds={secs:.3} mib_per_s={:.1} sha256={}",
                received.bytes,
                received.bytes as f64 / 1048576.0 / secs,
                received.sha256
            );
            if let Some(v) = s3.as_ref().and_then(|s3| s3.verification.as_ref()) {
                println!("verify   {}", v.summary());
            }
            verification_code(s3.as_ref(), "")
        }
        Err(e) => {
            eprintln!("mshot: {e:#}");
            exit::FAILED
        }
    }
}

/// `mshot upload IMAGE --bucket B`: exit 0 when the object and its manifest
/// are stored and verified, 2 for bad flags, 1 otherwise.
fn run_upload(args: &mshot::cli::UploadArgs) -> u8 {
    use tracing_subscriber::{EnvFilter, fmt};
    let level = match args.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let _ = fmt()
        .with_writer(|| mshot::progress::Stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .with_env_filter(
            EnvFilter::try_from_env("MSHOT_LOG")
                .unwrap_or_else(|_| EnvFilter::new(format!("mshot={level},warn"))),
        )
        .try_init();
    match mshot::config::s3_spec(&args.s3) {
        Ok(Some(_)) => {}
        Ok(None) => {
            eprintln!("mshot: mshot upload needs --bucket BUCKET");
            return exit::USAGE;
        }
        Err(e) => {
            eprintln!("mshot: {e:#}");
            return exit::USAGE;
        }
    }
    let Some(runtime) = build_runtime(None) else {
        return exit::FAILED;
    };
    let label = args
        .image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let progress = std::sync::Arc::new(CaptureProgress::new(&label));
    let clock = std::time::Instant::now();
    let uploaded = runtime.block_on(async {
        let cancel = ctrl_c_token();
        mshot::upload::run(args, &progress, &cancel).await
    });
    match uploaded {
        Ok(done) => {
            progress.finish();
            let secs = clock.elapsed().as_secs_f64();
            println!("s3       {}", done.image_uri);
            println!("manifest {}", done.manifest_uri);
            println!("crc32c   {}", done.checksum_crc32c);
            println!("verify   {}", done.verification.summary());
            println!("bytes    {}", done.bytes);
            println!("sha256   {}", done.sha256);
            println!(
                "time     {secs:.1} s ({:.1} MiB/s)",
                done.bytes as f64 / 1048576.0 / secs.max(0.001)
            );
            if let Some(material) = &done.material {
                println!("material {material}");
            }
            // Unlike a capture's, an upload's material can simply be sent
            // again (`--overwrite`): fail, so a script retries.
            if !done.verification.verified {
                eprintln!(
                    "mshot: {} is kept but not verified: {}",
                    done.image_uri,
                    done.verification.summary()
                );
                return exit::UNVERIFIED;
            }
            if let Some(problem) = &done.material_problem {
                eprintln!(
                    "mshot: the image and its manifest are in the bucket, but {problem}; run the upload again with --overwrite"
                );
                return exit::FAILED;
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("mshot: {e:#}");
            exit::FAILED
        }
    }
}

async fn run_capture(args: &CaptureArgs) -> u8 {
    let job = match mshot::config::capture_job(args) {
        Ok(job) => job,
        Err(e) => {
            eprintln!("mshot: {e:#}");
            return exit::USAGE;
        }
    };
    let target = job.target().to_string();
    let progress = CaptureProgress::new(&target);
    let cancel = ctrl_c_token();
    match mshot::capture::capture(&job, &progress, &cancel).await {
        Ok(outcome) => {
            match (&outcome.image_path, &outcome.manifest.image) {
                (path, Some(image)) => {
                    if let Some(path) = path {
                        println!("image    {}", path.display());
                    }
                    if let Some(s3) = &outcome.manifest.s3 {
                        println!("s3       {}", s3.uri);
                        println!(
                            "crc32c   {} ({} parts of {} MiB)",
                            s3.checksum_crc32c.as_deref().unwrap_or("?"),
                            s3.parts,
                            s3.part_size >> 20
                        );
                        if let Some(v) = &s3.verification {
                            println!("verify   {}", v.summary());
                        }
                        if let Some(m) = &s3.material {
                            println!(
                                "material s3://{}/{} ({} objects{})",
                                s3.bucket,
                                m.prefix,
                                m.objects.len(),
                                match m.failed.len() {
                                    0 => String::new(),
                                    n => format!(", {n} NOT UPLOADED: see the manifest"),
                                }
                            );
                        }
                    }
                    println!("bytes    {}", image.bytes);
                    println!("sha256   {}", image.sha256);
                    println!(
                        "time     {:.1} s ({:.1} MiB/s)",
                        outcome.manifest.duration_seconds,
                        image.bytes as f64
                            / 1048576.0
                            / outcome.manifest.duration_seconds.max(0.001)
                    );
                    let source = &outcome.manifest.source;
                    if let Some(method) = source.method {
                        println!("method   {} ({})", method.name(), source.reason);
                    }
                    if source.compressed {
                        println!(
                            "wire     {} bytes for {} bytes of image ({:.1}x smaller)",
                            source.wire_bytes,
                            image.bytes,
                            image.bytes as f64 / source.wire_bytes.max(1) as f64
                        );
                    }
                    if let Some(digest) = &source.digest {
                        println!("digest   LiME's own SHA-256 matches ({})", digest.lime);
                    }
                    if let Some(m) = &outcome.manifest_path {
                        println!("manifest {}", m.display());
                    }
                }
                _ => println!(
                    "dry run OK: {target}: kernel {}, root via {}, {}; nothing captured",
                    outcome.manifest.kernel_release,
                    outcome
                        .manifest
                        .privilege
                        .map(|p| p.describe())
                        .unwrap_or("?"),
                    match outcome.manifest.source.method {
                        Some(mshot::source::Used::Kcore) =>
                            "/proc/kcore readable and covering System RAM",
                        _ => "module verified on the target",
                    }
                ),
            }
            let mut code = exit::OK;
            if let (Some(image), false) = (&outcome.image_path, args.analyze.is_empty()) {
                progress.phase("analysing");
                match analyze_capture(image, args).await {
                    Ok(analysis) => code = verdict_code(&analysis),
                    Err(e) => {
                        eprintln!(
                            "mshot: {target}: the image is complete, but analysis failed: {e:#}"
                        );
                        return exit::FAILED;
                    }
                }
            }
            if outcome.cleanup_failed {
                eprintln!(
                    "mshot: {target}: cleanup failed: {}",
                    outcome.manifest.cleanup.errors.join("; ")
                );
                return exit::CLEANUP_FAILED;
            }
            match verification_code(outcome.manifest.s3.as_ref(), &format!("{target}: ")) {
                exit::OK => code,
                unverified => unverified,
            }
        }
        Err(e) => {
            eprintln!("mshot: {target}: {}", mshot::sanitize::error_chain(&e));
            exit::FAILED
        }
    }
}

/// 0, or 4 after saying why when the object in the bucket is not verified.
fn verification_code(s3: Option<&mshot::s3::S3Record>, label: &str) -> u8 {
    match s3.and_then(|s3| s3.unverified()) {
        Some(why) => {
            eprintln!("mshot: {label}{why}");
            exit::UNVERIFIED
        }
        None => exit::OK,
    }
}

/// `mshot -c FILE`: validate the whole file, then capture every host.
fn run_fleet(args: &CaptureArgs, file: &std::path::Path) -> u8 {
    use mshot::fleet::{self, config};
    let overrides = fleet::flags::overrides(args);
    let mut plan = match config::load(file, &overrides) {
        Ok(plan) => plan,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "mshot: {} problem(s) in {}; nothing was started",
                errors.errors.len(),
                file.display()
            );
            return exit::USAGE;
        }
    };
    fleet::flags::apply(&mut plan, args);
    let mut log_args = args.clone();
    log_args.log_dir = plan.log_dir.clone();
    log_args.server = Some("fleet".into());
    let _log_guard = init_logging(&log_args);
    for warning in &plan.warnings {
        tracing::warn!("{warning}");
    }
    let workers = (plan.workers)
        .unwrap_or(config::Workers::Auto)
        .resolve(plan.hosts.len());
    let report_path = args.report.clone().unwrap_or_else(|| {
        plan.output_dir.join(format!(
            "mshot-fleet-{}.json",
            jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ")
        ))
    });
    // Output directories exist before any host starts (a typo fails here, once).
    for host in &plan.hosts {
        if let Some(dir) = host.job.image_path.parent()
            && let Err(e) = std::fs::create_dir_all(dir)
        {
            eprintln!(
                "mshot: {}: cannot create the output directory {}: {e}",
                host.name,
                dir.display()
            );
            return exit::USAGE;
        }
    }
    if plan.hosts.is_empty() {
        eprintln!("mshot: no host left to capture after --hosts/--shard");
        return exit::USAGE;
    }
    tracing::info!(
        "{}: {} host(s), {workers} at a time{}",
        file.display(),
        plan.hosts.len(),
        if args.dry_run { ", dry run" } else { "" }
    );
    let options = fleet::FleetOptions {
        workers,
        log_dir: log_args.log_dir.clone(),
        log_prefix: plan.log_prefix.clone(),
        bench_source_port: args.bench_source_port,
        plain: std::env::var("TERM").is_ok_and(|t| t == "dumb"),
    };
    if let Some(dir) = &options.log_dir
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        eprintln!("mshot: cannot create --log-dir {}: {e}", dir.display());
        return exit::USAGE;
    }
    let Some(runtime) = build_runtime(None) else {
        return exit::FAILED;
    };
    let report = runtime.block_on(async {
        let cancel = ctrl_c_token();
        fleet::run(plan, &options, cancel).await
    });
    print!("{}", report.table());
    let mut code = if report.any_cleanup_failed() {
        exit::CLEANUP_FAILED
    } else if report.all_succeeded() && report.any_findings() {
        exit::FINDINGS
    } else if report.all_succeeded() {
        exit::OK
    } else if report.only_unverified() {
        exit::UNVERIFIED
    } else {
        exit::FAILED
    };
    match report.write(&report_path) {
        Ok(()) => println!("report   {}", report_path.display()),
        Err(e) => {
            eprintln!("mshot: {e:#}");
            if code == exit::OK {
                code = exit::FAILED;
            }
        }
    }
    code
}

/// A token cancelled by the first Ctrl-C (or SIGTERM, as a scheduler stopping
/// a job sends); what it stops still cleans up.
fn ctrl_c_token() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let terminated = async {
            match term.as_mut() {
                Some(t) => t.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = tokio::signal::ctrl_c() => if r.is_err() { return },
            _ = terminated => {}
        }
        tracing::warn!(
            "interrupted: cleaning up the targets before exiting (Ctrl-C again quits at once, leaving them as they are)"
        );
        trigger.cancel();
        // Cleanup waits for the targets; a second Ctrl-C is the way out.
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!(
                "mshot: interrupted twice: exiting without finishing cleanup; check the targets for a loaded lime module"
            );
            std::process::exit(130);
        }
    });
    token
}

/// Runs `--analyze` plugins on a fresh image, prints them and stores NAME.<plugin>.json.
async fn analyze_capture(
    image: &std::path::Path,
    args: &CaptureArgs,
) -> anyhow::Result<mshot::analyze_cmd::Analysis> {
    use mshot::analyze_cmd::{AnalyzeConfig, analyze_and_store, default_cache_dir, render_table};
    let image = image.to_path_buf();
    let plugins = args.analyze.clone();
    let profile = args.profile.clone();
    let (analysis, written) = tokio::task::spawn_blocking(move || {
        let config = AnalyzeConfig {
            threads: false,
            cache_dir: default_cache_dir(),
            pids: Vec::new(),
            dump_dir: None,
        };
        analyze_and_store(&image, &plugins, profile.as_deref(), &config)
    })
    .await??;
    for (plugin, rows) in &analysis.results {
        println!("\n== {plugin} ==");
        if let Some(v) = (plugin == "triage").then(|| analysis.verdict()).flatten() {
            println!("verdict: {}", v.text());
        }
        print!("{}", render_table(plugin, rows));
    }
    for path in written {
        println!("wrote    {}", path.display());
    }
    Ok(analysis)
}

/// stderr gets warnings (info with -v, debug with -vv); `--log-dir` gets everything at debug.
fn init_logging(args: &CaptureArgs) -> Option<()> {
    use tracing_subscriber::{
        EnvFilter, Layer, fmt, layer::SubscriberExt, util::SubscriberInitExt,
    };
    let level = match args.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let stderr_filter = EnvFilter::try_from_env("MSHOT_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("mshot={level},warn")));
    let stderr_layer = fmt::layer()
        .with_writer(|| mshot::progress::Stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .with_filter(stderr_filter);
    let file_layer = args.log_dir.as_ref().and_then(|dir| {
        std::fs::create_dir_all(dir).ok()?;
        let stamp = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ");
        let name = format!(
            "mshot-{}-{stamp}.log",
            args.server
                .as_deref()
                .unwrap_or("run")
                .replace(['/', ':'], "_")
        );
        let file = std::fs::File::create(dir.join(name)).ok()?;
        Some(
            fmt::layer()
                .with_writer(std::sync::Mutex::new(file))
                .with_ansi(false)
                .with_filter(EnvFilter::new("mshot=debug,warn")),
        )
    });
    tracing_subscriber::registry()
        .with(stderr_layer)
        .with(file_layer)
        .init();
    Some(())
}

/// The multi-thread runtime every networked command runs on (`workers`
/// caps its worker threads; default one per core); `None` after saying why
/// it could not start.
fn build_runtime(workers: Option<usize>) -> Option<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    match builder.enable_all().build() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("mshot: cannot start the async runtime: {e}");
            None
        }
    }
}

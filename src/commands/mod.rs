//! One entry point per command: each turns flags into the work below it,
//! prints the outcome and chooses the exit code (docs/exit-codes.md).

mod analyze;
mod capture;
mod fleet;
pub mod job;
mod live;
pub mod profile;
pub mod repo;
mod settings;
mod signals;
mod stack;
mod upload;

use std::io::IsTerminal;

use crate::cli::{CaptureArgs, Cli, Command};

pub use crate::analysis::UsageError;

/// Exit codes, documented in docs/exit-codes.md.
pub mod exit {
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
fn verdict_code(a: &crate::analysis::Analysis) -> u8 {
    match a.verdict() {
        Some(v) if v.findings > 0 => exit::FINDINGS,
        _ => exit::OK,
    }
}

/// Runs the command the flags name; the process exit code.
pub fn run(cli: Cli) -> u8 {
    let (args, bench_port) = match &cli.command {
        Some(Command::Analyze(args)) => {
            return match analyze::run(args) {
                Ok(analysis) => verdict_code(&analysis),
                Err(e) => {
                    eprintln!("mshot: {e:#}");
                    let usage = e.downcast_ref::<crate::analysis::UsageError>().is_some();
                    if usage { exit::USAGE } else { exit::FAILED }
                }
            };
        }
        Some(Command::Profile(args)) => {
            return match profile::run(args) {
                Ok(()) => exit::OK,
                Err(e) => {
                    eprintln!("mshot: {e:#}");
                    exit::FAILED
                }
            };
        }
        Some(Command::Repo(args)) => {
            return match repo::run(args) {
                Ok(()) => exit::OK,
                Err(e) => {
                    eprintln!("mshot: {e:#}");
                    exit::FAILED
                }
            };
        }
        Some(Command::Upload(args)) => return upload::main(args),
        Some(Command::Live(args)) => return live::run(args),
        Some(Command::Stack(args)) => return stack::run(args),
        Some(Command::Capture(args)) => (args.clone(), None),
        Some(Command::BenchReceive {
            capture,
            source_port,
        }) => (capture.clone(), Some(*source_port)),
        None => (cli.capture.clone(), None),
    };
    if let Some(file) = &args.config {
        return fleet::run(&args, file);
    }
    let _log_guard = init_logging(&args);
    // A capture into a local file runs on one worker: russh's session, the
    // stream reader and SHA-256 then pass each packet along on one thread
    // instead of waking another, which cut mshot's CPU per GiB by a sixth
    // on two cores (benches/tunnel.sh). S3 part uploads get every core.
    let workers = args.s3.bucket.is_none().then_some(1);
    let Some(runtime) = build_runtime(workers) else {
        return exit::FAILED;
    };
    // The capture runs as a task on the runtime's workers, beside russh's
    // session task, rather than on this thread: each SSH packet then passes
    // between them on one worker instead of waking this thread, which cut
    // the capture's context switches threefold and its CPU by a sixth.
    let capture = runtime.spawn(async move {
        match bench_port {
            Some(port) => capture::bench_receive(&args, port).await,
            None => capture::run(&args).await,
        }
    });
    runtime.block_on(capture).unwrap_or_else(|e| {
        eprintln!("mshot: internal error ({e}); please report it");
        exit::FAILED
    })
}

/// stderr gets warnings (info with -v, debug with -vv); `--log-dir` gets everything at debug.
pub(crate) fn init_logging(args: &CaptureArgs) -> Option<()> {
    init_logging_for(
        args.verbose,
        args.log_dir.as_deref(),
        args.conn.server.as_deref(),
    )
}

/// stderr's level: warnings by default (the results go to stdout, and a
/// terminal shows a progress bar); `-v` the steps, `-vv` debug, `-vvv` trace.
pub(crate) fn log_level(verbose: u8) -> &'static str {
    match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    }
}

/// Logging for any command: `verbose` raises stderr's level, `log_dir`
/// gets a debug log named after `label`.
pub(crate) fn init_logging_for(
    verbose: u8,
    log_dir: Option<&std::path::Path>,
    label: Option<&str>,
) -> Option<()> {
    use tracing_subscriber::{
        EnvFilter, Layer, fmt, layer::SubscriberExt, util::SubscriberInitExt,
    };
    let level = log_level(verbose);
    let stderr_filter = EnvFilter::try_from_env("MSHOT_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("mshot={level},warn")));
    let stderr_layer = fmt::layer()
        .with_writer(|| crate::util::progress::Stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .with_filter(stderr_filter);
    let file_layer = log_dir.and_then(|dir| {
        std::fs::create_dir_all(dir).ok()?;
        let stamp = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ");
        let name = format!(
            "mshot-{}-{stamp}.log",
            label.unwrap_or("run").replace(['/', ':'], "_")
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
pub(crate) fn build_runtime(workers: Option<usize>) -> Option<tokio::runtime::Runtime> {
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

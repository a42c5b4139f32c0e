//! `mshot`: parse flags, run, turn the outcome into an exit code.

use std::process::ExitCode;

use clap::Parser;
use mshot::cli::{CaptureArgs, Cli, Command};
use mshot::progress::CaptureProgress;

/// Exit codes, documented in the README.
mod exit {
    pub const OK: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const CLEANUP_FAILED: u8 = 3;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match &cli.command {
        Some(Command::Capture(args)) => args.clone(),
        None => cli.capture.clone(),
    };
    let _log_guard = init_logging(&args);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mshot: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    ExitCode::from(runtime.block_on(run_capture(&args)))
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
    match mshot::capture::capture(&job, &progress).await {
        Ok(outcome) => {
            match (&outcome.image_path, &outcome.manifest.image) {
                (Some(path), Some(image)) => {
                    println!("image    {}", path.display());
                    println!("bytes    {}", image.bytes);
                    println!("sha256   {}", image.sha256);
                    println!(
                        "time     {:.1} s ({:.1} MiB/s)",
                        outcome.manifest.duration_seconds,
                        image.bytes as f64
                            / 1048576.0
                            / outcome.manifest.duration_seconds.max(0.001)
                    );
                    if let Some(m) = &outcome.manifest_path {
                        println!("manifest {}", m.display());
                    }
                }
                _ => println!(
                    "dry run OK: {target}: kernel {}, root via {:?}, module verified on the target; nothing captured",
                    outcome.manifest.kernel_release,
                    outcome
                        .manifest
                        .privilege
                        .map(|p| format!("{p:?}"))
                        .unwrap_or_default()
                ),
            }
            if outcome.cleanup_failed {
                eprintln!(
                    "mshot: {target}: cleanup failed: {}",
                    outcome.manifest.cleanup.errors.join("; ")
                );
                return exit::CLEANUP_FAILED;
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("mshot: {target}: {e:#}");
            exit::FAILED
        }
    }
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
        .with_writer(std::io::stderr)
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

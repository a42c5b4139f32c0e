//! `mshot --server ...`: one capture, and `bench-receive`, its receive path alone.

use crate::cli::CaptureArgs;
use crate::util::progress::CaptureProgress;

use super::signals::interrupt_token;
use super::{exit, verdict_code};

pub async fn bench_receive(args: &CaptureArgs, port: u16) -> u8 {
    let job = match crate::commands::job::bench_job(args) {
        Ok(job) => job,
        Err(e) => {
            eprintln!("mshot: {e:#}");
            return exit::USAGE;
        }
    };
    let progress = CaptureProgress::new(&job.target().to_string());
    let clock = std::time::Instant::now();
    match crate::capture::bench_receive(&job, port, &progress).await {
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

pub async fn run(args: &CaptureArgs) -> u8 {
    let job = match crate::commands::job::capture_job(args) {
        Ok(job) => job,
        Err(e) => {
            eprintln!("mshot: {e:#}");
            return exit::USAGE;
        }
    };
    let target = job.target().to_string();
    let progress = CaptureProgress::new(&target);
    let cancel = interrupt_token();
    match crate::capture::capture(&job, &progress, &cancel).await {
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
                        Some(crate::pipeline::source::Used::Kcore) =>
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
            eprintln!(
                "mshot: {target}: {}",
                crate::util::sanitize::error_chain(&e)
            );
            exit::FAILED
        }
    }
}

/// 0, or 4 after saying why when the object in the bucket is not verified.
fn verification_code(s3: Option<&crate::pipeline::sink::s3::S3Record>, label: &str) -> u8 {
    match s3.and_then(|s3| s3.unverified()) {
        Some(why) => {
            eprintln!("mshot: {label}{why}");
            exit::UNVERIFIED
        }
        None => exit::OK,
    }
}

/// Runs `--analyze` plugins on a fresh image, prints them and stores NAME.<plugin>.json.
async fn analyze_capture(
    image: &std::path::Path,
    args: &CaptureArgs,
) -> anyhow::Result<crate::analysis::Analysis> {
    use crate::analysis::{analyze_and_store, render_table};
    let image = image.to_path_buf();
    let plugins = args.analyze.clone();
    let profile = args.profile.clone();
    let (analysis, written) = tokio::task::spawn_blocking(move || {
        analyze_and_store(&image, &plugins, profile.as_deref())
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

//! `mshot -c FILE`: validate the whole file, then capture every host.

mod flags;

use crate::cli::CaptureArgs;

use super::signals::interrupt_token;
use super::{build_runtime, exit, init_logging};

/// `mshot -c FILE`: validate the whole file, then capture every host.
pub fn run(args: &CaptureArgs, file: &std::path::Path) -> u8 {
    use crate::fleet::{self, config};
    let overrides = flags::overrides(args);
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
    flags::apply(&mut plan, args);
    let mut log_args = args.clone();
    log_args.log_dir = plan.log_dir.clone();
    log_args.conn.server = Some("fleet".into());
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
    if !args.live.is_empty() {
        return live(plan, args, workers, &report_path);
    }
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
        let cancel = interrupt_token();
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

#[cfg(test)]
mod tests;

/// `-c FILE --live PLUGINS`: every host analysed live, then stacked.
fn live(
    plan: crate::fleet::config::FleetPlan,
    args: &CaptureArgs,
    workers: usize,
    report_path: &std::path::Path,
) -> u8 {
    use crate::fleet::live::{self, LiveFleet};
    let plugins = match crate::analysis::plugin_names(&args.live) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("mshot: {e:#}");
            return exit::USAGE;
        }
    };
    if plan.hosts.is_empty() {
        eprintln!("mshot: no host left to analyse after --hosts/--shard");
        return exit::USAGE;
    }
    let options = LiveFleet {
        plugins,
        workers,
        deadline: std::time::Duration::from_secs(120),
        cache_dir: super::live::default_material_cache(),
    };
    eprintln!(
        "mshot: {} host(s), {workers} at a time, live: {}",
        plan.hosts.len(),
        options.plugins.join(", ")
    );
    let Some(runtime) = build_runtime(None) else {
        return exit::FAILED;
    };
    let hosts = runtime.block_on(async {
        let cancel = interrupt_token();
        live::run(plan, &options, cancel).await
    });
    let outliers = live::outliers(&hosts);
    println!("== outliers ==");
    print!("{}", crate::analysis::stack::render(&outliers));
    let mut code = exit::OK;
    for h in &hosts {
        match &h.outcome {
            Ok(o) if o.failed.is_empty() => {
                if o.analysis.verdict().is_some_and(|v| v.findings > 0) && code == exit::OK {
                    code = exit::FINDINGS;
                }
            }
            _ => code = exit::FAILED,
        }
    }
    match live::write_report(report_path, &hosts, &outliers) {
        Ok(()) => println!("report   {}", report_path.display()),
        Err(e) => {
            eprintln!(
                "mshot: cannot write the report {}: {e:#}",
                report_path.display()
            );
            code = exit::FAILED;
        }
    }
    code
}

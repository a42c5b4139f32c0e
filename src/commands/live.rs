//! `mshot live --server HOST PLUGIN...`: plugins on a running host, with the
//! output of `mshot analyze`, the cost on stderr and a record of every
//! remote command beside.

use std::path::PathBuf;
use std::time::Duration;

use crate::analysis::{plugin_names, render_table, to_json};
use crate::cli::{LiveArgs, OutputFormat};
use crate::live::{LiveJob, LiveOutcome, analyze};
use crate::util::sanitize::error_chain;

use super::job::{Connection, connection};
use super::signals::interrupt_token;
use super::{build_runtime, exit, init_logging_for, verdict_code};

pub fn run(args: &LiveArgs) -> u8 {
    let _log = init_logging_for(args.verbose, None, args.conn.server.as_deref());
    let names = match plugin_names(&args.plugins) {
        Ok(names) => names,
        Err(e) => {
            eprintln!("mshot: {e:#}");
            return exit::USAGE;
        }
    };
    let Connection {
        route,
        host_keys,
        ssh,
        sudo_password,
        sudo,
    } = match connection(&args.conn, "analyse") {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mshot: {e:#}");
            return exit::USAGE;
        }
    };
    let job = LiveJob {
        route,
        host_keys,
        ssh,
        sudo_password,
        sudo,
        plugins: names,
        threads: args.threads,
        pids: args.pid.clone(),
        deadline: Duration::from_secs(args.plugin_timeout.max(1)),
        cache_dir: (!args.no_cache)
            .then(|| args.cache_dir.clone().or_else(default_material_cache))
            .flatten(),
    };
    let target = job.target().to_string();
    let Some(runtime) = build_runtime(None) else {
        return exit::FAILED;
    };
    let outcome = runtime.block_on(async {
        let cancel = interrupt_token();
        tokio::select! {
            r = analyze(&job) => r,
            _ = cancel.cancelled() => Err(anyhow::anyhow!("interrupted; nothing was written on the target")),
        }
    });
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            eprintln!("mshot: {target}: {}", error_chain(&e));
            return exit::FAILED;
        }
    };
    print(&outcome, args.format);
    eprintln!("mshot: {target}: {}", cost(&outcome));
    let dir = args
        .output_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("."));
    match write_record(&dir, &job, &outcome) {
        Ok(path) => eprintln!("mshot: record of the remote commands: {}", path.display()),
        Err(e) => {
            eprintln!("mshot: {target}: cannot write the record: {e:#}");
            return exit::FAILED;
        }
    }
    for note in &outcome.notes {
        eprintln!("mshot: note: {note}");
    }
    if !outcome.failed.is_empty() {
        for (plugin, why) in &outcome.failed {
            eprintln!("mshot: {target}: {plugin} failed, no rows shown for it: {why}");
        }
        return exit::FAILED;
    }
    verdict_code(&outcome.analysis)
}

fn print(outcome: &LiveOutcome, format: OutputFormat) {
    let analysis = &outcome.analysis;
    match format {
        OutputFormat::Json => {
            let text = serde_json::to_string_pretty(&to_json(analysis)).unwrap_or_default();
            println!("{text}");
        }
        OutputFormat::Table => {
            for (i, (name, rows)) in analysis.results.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                if analysis.results.len() > 1 {
                    println!("== {name} ==");
                }
                if let Some(v) = (name == "triage").then(|| analysis.verdict()).flatten() {
                    println!("verdict: {}", v.text());
                }
                print!("{}", render_table(name, rows));
            }
        }
    }
}

/// What the run read: /proc/kcore against RAM, and the material.
fn cost(o: &LiveOutcome) -> String {
    let mib = |b: u64| b as f64 / 1048576.0;
    format!(
        "kernel {}: read {:.1} MiB of /proc/kcore in {} requests ({:.2}% of {:.0} MiB RAM), material {:.1} MiB{}, {:.1} s",
        o.kernel_release,
        mib(o.kcore_bytes),
        o.kcore_requests,
        100.0 * o.kcore_bytes as f64 / o.ram_bytes.max(1) as f64,
        mib(o.ram_bytes),
        mib(o.material_bytes),
        if o.btf_cached { " (BTF cached)" } else { "" },
        o.seconds
    )
}

fn write_record(dir: &std::path::Path, job: &LiveJob, o: &LiveOutcome) -> anyhow::Result<PathBuf> {
    let host = job.target().host.clone();
    let stamp = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ");
    let name = crate::util::sanitize::file_name_part(&host);
    // Two runs in one second keep two records.
    let path = (1..)
        .map(|n| match n {
            1 => dir.join(format!("{name}-{stamp}-live.json")),
            n => dir.join(format!("{name}-{stamp}-{n}-live.json")),
        })
        .find(|p| !p.exists())
        .unwrap_or_else(|| dir.join(format!("{name}-{stamp}-live.json")));
    let record = serde_json::json!({
        "tool": "mshot",
        "tool_version": env!("CARGO_PKG_VERSION"),
        "host": host,
        "user": job.target().user,
        "kernel_release": o.kernel_release,
        "plugins": job.plugins,
        "failed": o.failed.iter().map(|(p, why)| serde_json::json!({"plugin": p, "error": why})).collect::<Vec<_>>(),
        "seconds": o.seconds,
        "ram_bytes": o.ram_bytes,
        "kcore_bytes_read": o.kcore_bytes,
        "kcore_requests": o.kcore_requests,
        "material_bytes": o.material_bytes,
        "btf_cached": o.btf_cached,
        "audit": o.audit,
    });
    std::fs::create_dir_all(dir)?;
    let mut text = serde_json::to_vec_pretty(&record)?;
    text.push(b'\n');
    crate::util::fs::write_small_file(&path, &text)?;
    Ok(path)
}

pub(super) fn default_material_cache() -> Option<PathBuf> {
    crate::analysis::cache_dir("material")
}

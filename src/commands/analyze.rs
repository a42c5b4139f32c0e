//! `mshot analyze IMAGE PLUGIN...`: analysis of an image on disk, printed
//! as tables or JSON.

use std::io::Write;

use anyhow::Context;
use memimage::plugins::integrity::Verdict;

use crate::analysis::{
    Analysis, AnalyzeConfig, analyze_image, default_cache_dir, render_table, to_json,
    write_json_files,
};
use crate::cli::{AnalyzeArgs, OutputFormat};

/// Runs `mshot analyze`; the analysis is returned for its verdict.
pub fn run(args: &AnalyzeArgs) -> anyhow::Result<Analysis> {
    let cfg = AnalyzeConfig {
        threads: args.threads,
        cache_dir: if args.no_cache {
            None
        } else {
            args.cache_dir.clone().or_else(default_cache_dir)
        },
        pids: args.pid.clone(),
        dump_dir: args.dump_dir.clone(),
    };
    let analysis = analyze_image(&args.image, &args.plugins, args.profile.as_deref(), &cfg)?;
    let mut text = String::new();
    match args.format {
        OutputFormat::Json => {
            text = serde_json::to_string_pretty(&to_json(&analysis))?;
            text.push('\n');
        }
        OutputFormat::Table => {
            for (i, (name, rows)) in analysis.results.iter().enumerate() {
                if i > 0 {
                    text.push('\n');
                }
                if analysis.results.len() > 1 {
                    text.push_str(&format!("== {name} ==\n"));
                }
                if name == "triage" {
                    text.push_str(&format!("verdict: {}\n", Verdict::of(rows).text()));
                }
                text.push_str(&render_table(name, rows));
            }
        }
    }
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        // A closed pipe (`| head`) is not an error worth reporting.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(analysis),
        r => r.context("writing output")?,
    }
    if let Some(dir) = &args.output_json_dir {
        write_json_files(&args.image, dir, &analysis)?;
    }
    Ok(analysis)
}

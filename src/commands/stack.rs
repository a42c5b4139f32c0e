//! `mshot stack IMAGE...`: the processes, modules, listeners and findings
//! that only a few of several captures have.

use crate::analysis::stack::{outliers, render};
use crate::analysis::{AnalyzeConfig, analyze_image, default_cache_dir, plugin_names};
use crate::cli::{OutputFormat, StackArgs};

use super::exit;

pub fn run(args: &StackArgs) -> u8 {
    let plugins = match plugin_names(&args.plugins) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("mshot: {e:#}");
            return exit::USAGE;
        }
    };
    let cfg = AnalyzeConfig {
        threads: false,
        cache_dir: default_cache_dir(),
        pids: Vec::new(),
        dump_dir: None,
    };
    let mut analyses = Vec::new();
    for image in &args.images {
        match analyze_image(image, &plugins, args.profile.as_deref(), &cfg) {
            Ok(a) => analyses.push((image.display().to_string(), a)),
            Err(e) => {
                eprintln!("mshot: {}: {e:#}", image.display());
                return exit::FAILED;
            }
        }
    }
    let refs: Vec<(String, &crate::analysis::Analysis)> =
        analyses.iter().map(|(n, a)| (n.clone(), a)).collect();
    let found = outliers(&refs);
    match args.format {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "outliers": found }))
                .unwrap_or_default()
        ),
        OutputFormat::Table => print!("{}", render(&found)),
    }
    exit::OK
}

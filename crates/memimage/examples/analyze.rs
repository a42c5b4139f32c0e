//! Stand-in for `mshot analyze` until the CLI wires `src/analyze_cmd.rs`:
//! `cargo run --release -p memimage --example analyze -- IMAGE PLUGIN... [--profile P]`.

#[path = "../../../src/analyze_cmd.rs"]
#[allow(dead_code)]
mod analyze_cmd;
#[path = "../../../src/material_load.rs"]
#[allow(dead_code)]
mod material_load;

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: analyze_cmd::AnalyzeArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match analyze_cmd::run(&cli.args) {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

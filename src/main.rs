//! `mshot`: parse flags, run, turn the outcome into an exit code.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = mshot::cli::Cli::parse();
    std::process::ExitCode::from(mshot::commands::run(cli))
}

//! `shoal-agent`: the per-workstation daemon.

use std::process::ExitCode;

fn main() -> ExitCode {
    if std::env::args().any(|a| a == "--version" || a == "-V") {
        println!("shoal-agent {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "shoal-agent: the daemon is not part of this build yet; use `shoal` for keys and packages"
    );
    ExitCode::from(shoal_agent::cli::exit::UNAVAILABLE)
}

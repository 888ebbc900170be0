//! `shoal`: the command-line tool for workstations and admin laptops.

use clap::Parser;

fn main() -> std::process::ExitCode {
    // `shoal demo` and `shoal bench` run agents in this process.
    shoal_agent::alloc_tuning::tune();
    // Both rustls and rcgen compile ring in; make the choice explicit.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = shoal_agent::cli::Cli::parse();
    shoal_agent::cli::run(cli)
}

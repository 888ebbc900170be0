//! `shoal`: the command-line tool for workstations and admin laptops.

use clap::Parser;

fn main() -> std::process::ExitCode {
    // Both rustls and rcgen compile ring in; make the choice explicit.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = shoal_agent::cli::Cli::parse();
    shoal_agent::cli::run(cli)
}

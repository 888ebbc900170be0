//! `shoal`: the command-line tool for workstations and admin laptops.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = shoal_agent::cli::Cli::parse();
    shoal_agent::cli::run(cli)
}

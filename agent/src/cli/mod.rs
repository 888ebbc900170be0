//! The `shoal` command line: parsing, dispatch, one module per command
//! family. Commands return [`exit::CliError`]; [`run`] prints it (as JSON
//! too with `--json`) and maps it to the exit code.

pub mod bench;
pub mod ca;
pub mod demo;
pub mod demo_swarm;
pub mod exit;
pub mod key;
pub mod local;
pub mod output;
pub mod pkg;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use exit::CliError;
pub use output::Output;

/// Shoal: peer-to-peer distribution of signed packages across a LAN.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about, max_term_width = 100)]
pub struct Cli {
    /// Print results as JSON on stdout (for scripts).
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress bars.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// The local agent's control socket.
    #[arg(long, global = true, env = "SHOAL_SOCKET", default_value = local::DEFAULT_SOCKET)]
    pub socket: std::path::PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publisher signing keys.
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Create, verify and inspect packages.
    #[command(subcommand)]
    Pkg(pkg::PkgCommand),
    /// An offline certificate authority for agent identities.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    #[command(flatten)]
    Local(local::LocalCommand),
    /// Run a self-contained demonstration on this machine and clean up.
    Demo(demo::DemoArgs),
    /// Measure Shoal's performance on this machine.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    let out = Output {
        json: cli.json,
        quiet: cli.quiet,
    };
    let result = match cli.command {
        Command::Key(c) => key::run(c, out),
        Command::Pkg(c) => pkg::run(c, out),
        Command::Ca(c) => ca::run(c, out),
        Command::Local(c) => local::run(c, &cli.socket, out),
        Command::Demo(a) => demo::run(a, out),
        Command::Bench(c) => bench::run(c, out),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {:#}", e.error);
            if out.json {
                out.json(&serde_json::json!({
                    "ok": false,
                    "error": format!("{:#}", e.error),
                    "exit_code": e.code,
                }));
            }
            ExitCode::from(e.code)
        }
    }
}

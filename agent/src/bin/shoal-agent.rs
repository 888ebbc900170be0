//! `shoal-agent`: the per-workstation daemon.
//!
//! Parse the command line → load and validate the config (exit 78 on a
//! bad one) → start every part → wait for SIGINT/SIGTERM → shut down in
//! order within a grace period.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shoal_agent::agent::Agent;
use shoal_agent::config::{AgentConfig, LogFormat};

/// EX_CONFIG: the configuration is unusable.
const EXIT_CONFIG: u8 = 78;
/// EX_UNAVAILABLE: the agent could not start.
const EXIT_START: u8 = 69;

#[derive(Debug, Parser)]
#[command(
    name = "shoal-agent",
    version,
    about = "Shoal agent: finds peers and swarm-distributes signed packages"
)]
struct Args {
    /// Configuration file (YAML).
    #[arg(
        long,
        short,
        global = true,
        default_value = "/etc/shoal/agent.yaml",
        env = "SHOAL_AGENT_CONFIG"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the agent (the default).
    Run,
    /// Validate the configuration and exit.
    CheckConfig,
}

fn init_logging(config: &AgentConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log_level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

fn main() -> ExitCode {
    shoal_agent::alloc_tuning::tune();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let config = match AgentConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shoal-agent: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if matches!(args.command, Some(Cmd::CheckConfig)) {
        println!("{}: ok", args.config.display());
        return ExitCode::SUCCESS;
    }
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("shoal-agent: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_START);
        }
    };
    runtime.block_on(async {
        let agent = match Agent::start(config).await {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("cannot start: {e}");
                eprintln!("shoal-agent: cannot start: {e}");
                return ExitCode::from(EXIT_START);
            }
        };
        shutdown_signal().await;
        agent.shutdown().await;
        ExitCode::SUCCESS
    })
}

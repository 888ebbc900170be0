//! `shoal-agent`: the per-workstation daemon.
//!
//! Parse the command line → load and validate the config (exit 78 on a
//! bad one) → start every part → wait for SIGINT/SIGTERM → shut down in
//! order within a grace period. `enroll` instead obtains the certificate
//! the config's `tls:` paths name from the controller (see
//! [`shoal_agent::enroll`]) and exits.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shoal_agent::agent::Agent;
use shoal_agent::config::AgentConfig;
use shoal_agent::enroll::{EnrollOptions, Enrolled, enroll, local_hostname};

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
    /// Obtain this agent's certificate from the controller with a join
    /// token, writing the files the config's `tls:` section names.
    Enroll(EnrollArgs),
}

#[derive(Debug, clap::Args)]
struct EnrollArgs {
    /// Controller address: host:port or https://host:port (port 7800 if
    /// omitted).
    #[arg(long)]
    controller: String,
    /// Join token (`shoal-controller token create`).
    #[arg(long, env = "SHOAL_ENROLL_TOKEN", hide_env_values = true)]
    token: String,
    /// SHA-256 fingerprint of the controller's CA certificate
    /// (`shoal-controller ca-fingerprint`); hex, `:` separators allowed.
    #[arg(long)]
    ca_fingerprint: String,
    /// Host name sent to the controller, which derives the agent id from
    /// it [default: this machine's host name].
    #[arg(long)]
    hostname: Option<String>,
    /// Print the result (or the error) as one JSON document on stdout.
    #[arg(long)]
    json: bool,
}

/// Logs only (for `enroll`, a short command with nothing worth tracing).
fn init_logging(config: &AgentConfig) {
    let _ = shoal_agent::telemetry::init("shoal-agent", &config.log_level, config.log_format, None);
}

fn main() -> ExitCode {
    shoal_agent::alloc_tuning::tune();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    if let Some(Cmd::Enroll(e)) = &args.command {
        return run_enroll(&args.config, e);
    }
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
    // The OTLP exporter needs the runtime; it outlives the agent so the
    // last spans are flushed after shutdown.
    let telemetry = match runtime.block_on(async {
        shoal_agent::telemetry::init(
            "shoal-agent",
            &config.log_level,
            config.log_format,
            config.otlp.as_ref(),
        )
    }) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("shoal-agent: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let code = runtime.block_on(async {
        let agent = match Agent::start(config).await {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("cannot start: {e}");
                eprintln!("shoal-agent: cannot start: {e}");
                return ExitCode::from(EXIT_START);
            }
        };
        shoal_agent::signal::shutdown_signal().await;
        agent.shutdown().await;
        ExitCode::SUCCESS
    });
    telemetry.shutdown();
    code
}

/// `shoal-agent enroll`: the config is read only for its `tls:` paths and
/// logging (loading never requires the certificate files to exist).
fn run_enroll(config_path: &std::path::Path, args: &EnrollArgs) -> ExitCode {
    let fail = |code: u8, error: String| {
        eprintln!("shoal-agent enroll: {error}");
        if args.json {
            let doc = serde_json::json!({"ok": false, "error": error, "exit_code": code});
            println!("{doc}");
        }
        ExitCode::from(code)
    };
    let config = match AgentConfig::load(config_path) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_CONFIG, format!("configuration error: {e}")),
    };
    init_logging(&config);
    let opts = EnrollOptions {
        controller: args.controller.clone(),
        token: args.token.clone(),
        ca_fingerprint: args.ca_fingerprint.clone(),
        hostname: args.hostname.clone().unwrap_or_else(local_hostname),
        out: config.tls.clone(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(EXIT_START, format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(enroll(&opts)) {
        Ok(done) => {
            print_enrolled(&done, config_path, args.json);
            ExitCode::SUCCESS
        }
        Err(e) => fail(e.exit_code(), e.to_string()),
    }
}

fn print_enrolled(done: &Enrolled, config_path: &std::path::Path, json: bool) {
    let p = &done.paths;
    if json {
        let doc = serde_json::json!({
            "ok": true,
            "agent_id": done.agent_id,
            "groups": done.groups,
            "not_after_unix": done.not_after_unix,
            "ca": p.ca,
            "cert": p.cert,
            "key": p.key,
        });
        println!("{doc}");
        return;
    }
    let groups = if done.groups.is_empty() {
        "none".to_owned()
    } else {
        done.groups.join(", ")
    };
    println!("enrolled as {} (groups: {groups})", done.agent_id);
    println!(
        "  certificate valid until {}",
        utc_date(done.not_after_unix)
    );
    println!("  ca           {}", p.ca.display());
    println!("  certificate  {}", p.cert.display());
    println!("  key          {}", p.key.display());
    println!(
        "start the agent: shoal-agent --config {}",
        config_path.display()
    );
}

/// `YYYY-MM-DD HH:MM UTC` for Unix seconds (proleptic Gregorian).
fn utc_date(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn enroll_expiry_dates() {
        assert_eq!(super::utc_date(0), "1970-01-01 00:00 UTC");
        assert_eq!(super::utc_date(951_827_696), "2000-02-29 12:34 UTC");
        assert_eq!(super::utc_date(4_102_444_799), "2099-12-31 23:59 UTC");
    }
}

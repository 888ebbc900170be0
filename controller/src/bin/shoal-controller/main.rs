//! `shoal-controller`: the fleet controller and its admin commands.
//!
//! `serve` runs the controller. The other commands are admin calls to a
//! running controller over mTLS, with the identity the controller wrote
//! on first start (`<data_dir>/admin/`) unless `--identity` names another.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use shoal_controller::config::ControllerConfig;
use shoal_controller::server::Controller;
use shoal_proto::pb;
use shoal_proto::pb::admin_client::AdminClient;
use shoal_proto::units::parse_duration;

mod catalog;

/// EX_USAGE
const EXIT_USAGE: u8 = 64;
/// EX_UNAVAILABLE: the controller could not start or be reached.
const EXIT_UNAVAILABLE: u8 = 69;
/// EX_NOPERM: the call was refused.
const EXIT_NOPERM: u8 = 77;
/// EX_CONFIG
const EXIT_CONFIG: u8 = 78;
/// EX_DATAERR: `apply` refused the policy file (validation failed).
const EXIT_BAD_POLICY: u8 = 65;
/// EX_NOINPUT: the policy file could not be read.
const EXIT_NOINPUT: u8 = 66;

/// An input file (`apply -f`, a manifest) could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {cause}")]
pub(crate) struct InputFileError {
    path: String,
    cause: std::io::Error,
}

#[derive(Debug, Parser)]
#[command(
    name = "shoal-controller",
    version,
    about = "Shoal controller: enrollment CA, policies, rollouts"
)]
struct Args {
    /// Configuration file (YAML).
    #[arg(
        long,
        short,
        global = true,
        default_value = "/etc/shoal/controller.yaml",
        env = "SHOAL_CONTROLLER_CONFIG"
    )]
    config: PathBuf,
    /// Controller address for admin commands [default: 127.0.0.1 and the
    /// configured listen port].
    #[arg(long, global = true)]
    controller: Option<String>,
    /// Directory with the admin identity (ca.pem, <name>.pem, <name>.key)
    /// [default: <data_dir>/admin].
    #[arg(long, global = true)]
    identity: Option<PathBuf>,
    /// Name of the identity's files in --identity.
    #[arg(long, global = true, default_value = "admin")]
    name: String,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the controller.
    Serve,
    /// Validate the configuration and exit.
    CheckConfig,
    /// The fleet CA's fingerprint, for `shoal-agent enroll --ca-fingerprint`.
    CaFingerprint,
    /// Join tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Enrolled agents.
    #[command(subcommand)]
    Agents(AgentsCmd),
    /// Write a consistent backup of the running controller (state and CA,
    /// including the CA key: keep it safe) to FILE (mode 0600).
    Backup {
        #[arg(long)]
        out: PathBuf,
    },
    /// Rebuild the configured data directory from a backup (controller
    /// stopped; the directory must hold no state yet).
    Restore {
        #[arg(long)]
        from: PathBuf,
    },
    /// Apply policy documents (YAML, several separated by `---`):
    /// validated in full first, then stored under a new policy version.
    Apply {
        /// The policy file; `-` reads standard input.
        #[arg(long = "file", short = 'f')]
        file: PathBuf,
        /// Validate and report only; store nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show stored objects.
    #[command(subcommand)]
    Get(GetCmd),
    /// Namespaces: who may publish what, and their quotas.
    #[command(subcommand)]
    Namespace(catalog::NamespaceCmd),
    /// Register or withdraw packages in the catalog.
    #[command(subcommand)]
    Package(catalog::PackageCmd),
    /// Search the catalog by name@version text and labels.
    Catalog {
        text: Option<String>,
        /// Only packages with this label, key=value (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// Assign a package to a group: its agents fetch it, wave by wave.
    Assign {
        /// name@version (or content id) of a registered package.
        package: String,
        #[arg(long)]
        group: String,
        /// Hold by this long from now (e.g. 12h); reported, not enforced.
        #[arg(long)]
        deadline: Option<String>,
        /// Cumulative wave sizes (e.g. 5%,25%,100%); each starts when the
        /// agents before it are done or failed.
        #[arg(long, default_value = "100%")]
        waves: String,
        /// Pin the package on the agents (never evicted).
        #[arg(long)]
        pin: bool,
    },
    /// Rollout progress.
    #[command(subcommand)]
    Rollout(catalog::RolloutCmd),
    /// Make an admin identity signed by the fleet CA (offline: reads the
    /// CA key under the data directory) and write it to DIR as `ca.pem`,
    /// `NAME.pem`, `NAME.key`; use it with `--identity DIR --name NAME`.
    #[command(subcommand)]
    Identity(IdentityCmd),
    /// Query the audit log.
    Audit {
        /// Only entries of this actor.
        #[arg(long)]
        actor: Option<String>,
        /// Only entries younger than this (e.g. 1h, 7d).
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Debug, Subcommand)]
enum IdentityCmd {
    Create {
        /// The identity's name (its certificate's subject).
        #[arg(long = "for")]
        who: String,
        /// admin, publisher or viewer (repeatable).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum GetCmd {
    /// A policy document by name, or every document and the fleet's
    /// policy version.
    Policy {
        /// The document's name (not `name`: `--name` is the identity's).
        #[arg(value_name = "NAME")]
        document: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCmd {
    /// Make a join token.
    Create {
        /// Group the enrolled agents join (repeatable).
        #[arg(long = "group", required = true)]
        groups: Vec<String>,
        /// How long the token is valid.
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// How many agents may enroll with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Label given to the enrolled agents, key=value (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum AgentsCmd {
    /// List enrolled agents.
    List {
        #[arg(long)]
        group: Option<String>,
    },
    /// Revoke an agent: the controller and every agent refuse it.
    Revoke {
        agent_id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let config = match ControllerConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shoal-controller: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("shoal-controller: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    match args.command {
        Cmd::CheckConfig => {
            println!("{}: ok", args.config.display());
            ExitCode::SUCCESS
        }
        Cmd::Serve => {
            // The OTLP exporter needs the runtime, and must be flushed
            // after the controller has stopped.
            let telemetry = match runtime.block_on(async {
                shoal_agent::telemetry::init(
                    "shoal-controller",
                    &config.log_level,
                    config.log_format,
                    config.otlp.as_ref(),
                )
            }) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("shoal-controller: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let code = runtime.block_on(serve(config));
            telemetry.shutdown();
            code
        }
        Cmd::Restore { from } => restore(&from, &config.data_dir, args.json),
        Cmd::Identity(IdentityCmd::Create { who, roles, out }) => {
            identity_create(&config, &who, &roles, &out, args.json)
        }
        Cmd::CaFingerprint => match std::fs::read_to_string(config.data_dir.join("ca/ca.pem")) {
            Ok(pem) => match fingerprint_of(&pem) {
                Some(f) => {
                    println!("{f}");
                    ExitCode::SUCCESS
                }
                None => {
                    eprintln!(
                        "shoal-controller: {}/ca/ca.pem is not a certificate",
                        config.data_dir.display()
                    );
                    ExitCode::from(EXIT_CONFIG)
                }
            },
            Err(e) => {
                eprintln!(
                    "shoal-controller: {}/ca/ca.pem: {e} (start the controller once to create the CA)",
                    config.data_dir.display()
                );
                ExitCode::from(EXIT_UNAVAILABLE)
            }
        },
        cmd => runtime.block_on(async {
            let applying = matches!(cmd, Cmd::Apply { .. });
            let registering = matches!(cmd, Cmd::Package(catalog::PackageCmd::Register { .. }));
            match admin(
                &args.controller,
                &args.identity,
                &args.name,
                args.json,
                &config,
                cmd,
            )
            .await
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    let code = match e.downcast_ref::<tonic::Status>().map(tonic::Status::code) {
                        _ if e.downcast_ref::<InputFileError>().is_some() => EXIT_NOINPUT,
                        Some(tonic::Code::PermissionDenied | tonic::Code::Unauthenticated) => {
                            EXIT_NOPERM
                        }
                        Some(tonic::Code::InvalidArgument) if applying || registering => {
                            EXIT_BAD_POLICY
                        }
                        Some(tonic::Code::ResourceExhausted | tonic::Code::AlreadyExists) => {
                            EXIT_CANTCREAT
                        }
                        Some(tonic::Code::FailedPrecondition) => EXIT_USAGE,
                        Some(tonic::Code::InvalidArgument | tonic::Code::NotFound) => EXIT_USAGE,
                        _ => EXIT_UNAVAILABLE,
                    };
                    match e.downcast_ref::<tonic::Status>() {
                        Some(s) => eprintln!("shoal-controller: {}", s.message()),
                        None => eprintln!("shoal-controller: {e:#}"),
                    }
                    ExitCode::from(code)
                }
            }
        }),
    }
}

/// EX_DATAERR: the input is not what it should be.
const EXIT_DATAERR: u8 = 65;
/// EX_CANTCREAT
const EXIT_CANTCREAT: u8 = 73;

fn restore(from: &std::path::Path, data_dir: &std::path::Path, json: bool) -> ExitCode {
    use shoal_controller::backup::{BackupError, restore};
    let bytes = match std::fs::read(from) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("shoal-controller: {}: {e}", from.display());
            return ExitCode::from(66);
        }
    };
    match restore(&bytes, data_dir) {
        Ok(r) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"data_dir": data_dir, "records": r.records, "trees": r.trees, "backup_created_unix_ms": r.created_unix_ms})
                );
            } else {
                println!(
                    "restored {} records in {} trees into {}",
                    r.records,
                    r.trees,
                    data_dir.display()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("shoal-controller: restore: {e}");
            ExitCode::from(match e {
                BackupError::Invalid(_) => EXIT_DATAERR,
                _ => EXIT_CANTCREAT,
            })
        }
    }
}

fn fingerprint_of(pem: &str) -> Option<String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    Some(shoal_proto::identity::fingerprint(&der))
}

async fn serve(config: ControllerConfig) -> ExitCode {
    let controller = match Controller::start(config).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            eprintln!("shoal-controller: cannot start: {e}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    shoal_agent::signal::shutdown_signal().await;
    tracing::info!("shutting down");
    controller.shutdown().await;
    ExitCode::SUCCESS
}

async fn admin(
    controller: &Option<String>,
    identity: &Option<PathBuf>,
    name: &str,
    json: bool,
    config: &ControllerConfig,
    cmd: Cmd,
) -> anyhow::Result<()> {
    let dir = identity
        .clone()
        .unwrap_or_else(|| config.data_dir.join("admin"));
    let tls = shoal_controller::tls::admin_client_config(&dir, name)?;
    let addr = controller
        .clone()
        .unwrap_or_else(|| format!("127.0.0.1:{}", config.listen.port()));
    let (channel, _) = shoal_agent::transport::client::Connector::new(tls)
        .connect(&addr, Some("controller"))
        .await
        .with_context(|| format!("cannot reach the controller at {addr}"))?;
    let mut client = AdminClient::new(channel);
    match cmd {
        Cmd::Token(TokenCmd::Create {
            groups,
            ttl,
            uses,
            labels,
        }) => {
            let ttl = parse_duration(&ttl).context("--ttl")?;
            let labels = parse_labels(&labels)?;
            let r = client
                .create_token(pb::CreateTokenRequest {
                    groups,
                    ttl_seconds: ttl.as_secs(),
                    uses,
                    labels,
                })
                .await?
                .into_inner();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"token": r.token, "expires_unix_ms": r.expires_unix_ms})
                );
            } else {
                println!("{}", r.token);
            }
        }
        Cmd::Agents(AgentsCmd::List { group }) => {
            let r = client
                .list_agents(pb::ListAgentsRequest {
                    group: group.unwrap_or_default(),
                })
                .await?
                .into_inner();
            if json {
                let v: Vec<_> = r
                    .agents
                    .iter()
                    .map(|a| {
                        serde_json::json!({
                            "agent_id": a.agent_id, "groups": a.groups, "hostname": a.hostname,
                            "revoked": a.revoked, "online": a.online, "last_seen_unix_ms": a.last_seen_unix_ms, "certificate_serial": a.certificate_serial,
                            "certificate_expires_unix_ms": a.certificate_expires_unix_ms,
                            "policy_version": a.policy_version,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                println!(
                    "{:<24} {:<24} {:<8} {:<8} HOSTNAME",
                    "AGENT", "GROUPS", "ONLINE", "REVOKED"
                );
                for a in r.agents {
                    println!(
                        "{:<24} {:<24} {:<8} {:<8} {}",
                        a.agent_id,
                        a.groups.join(","),
                        a.online,
                        a.revoked,
                        a.hostname
                    );
                }
            }
        }
        Cmd::Agents(AgentsCmd::Revoke { agent_id, reason }) => {
            client
                .revoke_agent(pb::RevokeAgentRequest {
                    agent_id: agent_id.clone(),
                    reason,
                })
                .await?;
            if !json {
                println!("revoked {agent_id}");
            }
        }
        Cmd::Audit {
            actor,
            since,
            limit,
        } => {
            let since_unix_ms = match since {
                Some(s) => {
                    shoal_controller::now_ms()
                        - parse_duration(&s).context("--since")?.as_millis() as i64
                }
                None => 0,
            };
            let r = client
                .query_audit(pb::QueryAuditRequest {
                    since_unix_ms,
                    actor: actor.unwrap_or_default(),
                    limit,
                })
                .await?
                .into_inner();
            for e in r.records {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"at_unix_ms": e.at_unix_ms, "actor": e.actor, "role": e.role,
                            "action": e.action, "target": e.target, "allowed": e.allowed, "outcome": e.outcome})
                    );
                } else {
                    println!(
                        "{} {} ({}) {} {} {}",
                        e.at_unix_ms, e.actor, e.role, e.action, e.target, e.outcome
                    );
                }
            }
        }
        Cmd::Backup { out } => {
            use tokio::io::AsyncWriteExt;
            let tmp = out.with_extension("partial");
            let mut opts = tokio::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            opts.mode(0o600);
            let mut file = opts
                .open(&tmp)
                .await
                .with_context(|| format!("{}", tmp.display()))?;
            let mut stream = client.backup(pb::BackupRequest {}).await?.into_inner();
            let mut bytes = 0u64;
            while let Some(chunk) = stream.message().await? {
                bytes += chunk.data.len() as u64;
                file.write_all(&chunk.data)
                    .await
                    .with_context(|| format!("{}", tmp.display()))?;
            }
            file.sync_all()
                .await
                .with_context(|| format!("{}", tmp.display()))?;
            tokio::fs::rename(&tmp, &out)
                .await
                .with_context(|| format!("{}", out.display()))?;
            if json {
                println!("{}", serde_json::json!({"file": out, "bytes": bytes}));
            } else {
                println!("wrote {} ({bytes} bytes)", out.display());
            }
        }
        Cmd::Apply { file, dry_run } => {
            let yaml = read_policy_file(&file)?;
            let r = client
                .apply_policy(pb::ApplyPolicyRequest { yaml, dry_run })
                .await?
                .into_inner();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"version": r.version, "applied": r.applied, "dry_run": dry_run})
                );
            } else if dry_run {
                println!("valid: {} (nothing stored)", r.applied.join(", "));
            } else {
                println!(
                    "applied {} as policy version {}",
                    r.applied.join(", "),
                    r.version
                );
            }
        }
        Cmd::Get(GetCmd::Policy { document }) => {
            let r = client
                .get_policy(pb::GetPolicyRequest {
                    name: document.unwrap_or_default(),
                })
                .await?
                .into_inner();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"version": r.version, "yaml": r.yaml})
                );
            } else {
                println!("# policy version {}\n{}", r.version, r.yaml);
            }
        }
        Cmd::Namespace(c) => catalog::namespace(&mut client, json, c).await?,
        Cmd::Package(c) => catalog::package(&mut client, json, c).await?,
        Cmd::Catalog { text, labels } => catalog::catalog(&mut client, json, text, labels).await?,
        Cmd::Assign {
            package,
            group,
            deadline,
            waves,
            pin,
        } => {
            let a = catalog::AssignArgs {
                package,
                group,
                deadline,
                waves,
                pin,
            };
            catalog::assign(&mut client, json, a).await?
        }
        Cmd::Rollout(c) => catalog::rollout(&mut client, json, c).await?,
        Cmd::Serve
        | Cmd::CheckConfig
        | Cmd::CaFingerprint
        | Cmd::Restore { .. }
        | Cmd::Identity(_) => {}
    }
    Ok(())
}

/// `key=value` labels from the command line.
pub(crate) fn parse_labels(labels: &[String]) -> anyhow::Result<Vec<pb::Label>> {
    shoal_proto::labels::parse_labels(labels).map_err(|e| anyhow::anyhow!("--label: {e}"))
}

/// `identity create`: signs an admin identity with the CA on disk.
fn identity_create(
    config: &ControllerConfig,
    who: &str,
    roles: &[String],
    out: &std::path::Path,
    json: bool,
) -> ExitCode {
    for r in roles {
        if !["admin", "publisher", "viewer"].contains(&r.as_str()) {
            eprintln!("shoal-controller: --role {r:?}: use admin, publisher or viewer");
            return ExitCode::from(EXIT_USAGE);
        }
    }
    if !config.data_dir.join("ca/ca.pem").exists() {
        eprintln!(
            "shoal-controller: no fleet CA under {} (start the controller once to create it)",
            config.data_dir.display()
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let written = shoal_controller::ca::FleetCa::open(&config.data_dir, config.ca.as_ref())
        .and_then(|ca| ca.write_admin(out, who, roles, config.admin_cert_validity));
    match written {
        Ok(()) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"name": who, "roles": roles, "dir": out})
                );
            } else {
                println!(
                    "wrote {}/{who}.pem and {who}.key (roles {}); use --identity {} --name {who}",
                    out.display(),
                    roles.join(","),
                    out.display()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("shoal-controller: identity create: {e}");
            ExitCode::from(EXIT_CANTCREAT)
        }
    }
}

/// The text of `apply -f FILE` (`-`: standard input).
fn read_policy_file(file: &std::path::Path) -> Result<String, InputFileError> {
    let err = |cause| InputFileError {
        path: file.display().to_string(),
        cause,
    };
    if file.as_os_str() == "-" {
        use std::io::Read;
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).map_err(err)?;
        Ok(s)
    } else {
        std::fs::read_to_string(file).map_err(err)
    }
}

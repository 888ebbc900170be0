//! The catalog, namespace and rollout commands: `namespace`, `package`,
//! `catalog`, `assign`, `rollout`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use shoal_proto::pb;
use shoal_proto::pb::admin_client::AdminClient;
use shoal_proto::pb::package_status::State as PkgState;
use tonic::transport::Channel;

#[derive(Debug, Subcommand)]
pub enum NamespaceCmd {
    /// Create or replace a namespace: who may publish into it, with which
    /// signing keys, and how many bytes it may hold.
    Set {
        /// The namespace: what package names start with, before their `/`.
        #[arg(value_name = "NAMESPACE")]
        namespace: String,
        /// Identity (certificate name, role publisher) allowed to register
        /// and withdraw here (repeatable). Admins always may.
        #[arg(long = "publisher")]
        publishers: Vec<String>,
        /// Accepted signing key, `ed25519:<hex>` or a `.pub` file from
        /// `shoal key generate` (repeatable).
        #[arg(long = "key")]
        keys: Vec<String>,
        /// Bytes of registered packages allowed (e.g. 500GiB); 0 = unlimited.
        #[arg(long, default_value = "0")]
        quota: String,
    },
    /// Every namespace with its use.
    List,
}

#[derive(Debug, Subcommand)]
pub enum PackageCmd {
    /// Register a signed manifest in the catalog (signature, namespace ACL
    /// and quota are checked).
    Register {
        manifest: PathBuf,
        /// Only agents of these groups may fetch it (repeatable); default
        /// every agent.
        #[arg(long = "allowed-group")]
        allowed_groups: Vec<String>,
    },
    /// Withdraw a package: agents stop serving it and remove it unless pinned.
    Withdraw { package: String },
}

#[derive(Debug, Subcommand)]
pub enum RolloutCmd {
    /// Counts and a per-agent table for a package's rollout.
    Status {
        package: String,
        /// The group, when the package is assigned to several.
        #[arg(long)]
        group: Option<String>,
    },
}

/// A key given on the command line: the text itself or a file holding it.
fn key_text(k: &str) -> anyhow::Result<String> {
    if k.starts_with("ed25519:") {
        return Ok(k.to_owned());
    }
    let text = std::fs::read_to_string(k).with_context(|| format!("--key {k}"))?;
    Ok(text.trim().to_owned())
}

fn state_name(state: i32) -> &'static str {
    match PkgState::try_from(state) {
        Ok(PkgState::Queued) => "queued",
        Ok(PkgState::Downloading) => "active",
        Ok(PkgState::Paused) => "paused",
        Ok(PkgState::Complete) => "done",
        Ok(PkgState::Failed) => "failed",
        _ => "pending",
    }
}

pub async fn namespace(
    client: &mut AdminClient<Channel>,
    json: bool,
    cmd: NamespaceCmd,
) -> anyhow::Result<()> {
    match cmd {
        NamespaceCmd::Set {
            namespace: name,
            publishers,
            keys,
            quota,
        } => {
            let keys = keys
                .iter()
                .map(|k| key_text(k))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let quota_bytes = shoal_proto::units::parse_size(&quota)
                .map_err(|e| anyhow::anyhow!("--quota {quota:?}: {e}"))?;
            client
                .set_namespace(pb::SetNamespaceRequest {
                    namespace: Some(pb::Namespace {
                        name: name.clone(),
                        publishers,
                        keys,
                        quota_bytes,
                        used_bytes: 0,
                    }),
                })
                .await?;
            if json {
                println!("{}", serde_json::json!({"namespace": name}));
            } else {
                println!("namespace {name} set");
            }
        }
        NamespaceCmd::List => {
            let r = client
                .list_namespaces(pb::ListNamespacesRequest {})
                .await?
                .into_inner();
            if json {
                let v: Vec<_> = r
                    .namespaces
                    .iter()
                    .map(|n| {
                        serde_json::json!({"name": n.name, "publishers": n.publishers, "keys": n.keys,
                            "quota_bytes": n.quota_bytes, "used_bytes": n.used_bytes})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                println!(
                    "{:<20} {:>16} {:>16} PUBLISHERS",
                    "NAMESPACE", "USED", "QUOTA"
                );
                for n in r.namespaces {
                    println!(
                        "{:<20} {:>16} {:>16} {}",
                        n.name,
                        n.used_bytes,
                        if n.quota_bytes == 0 {
                            "unlimited".to_owned()
                        } else {
                            n.quota_bytes.to_string()
                        },
                        n.publishers.join(",")
                    );
                }
            }
        }
    }
    Ok(())
}

pub async fn package(
    client: &mut AdminClient<Channel>,
    json: bool,
    cmd: PackageCmd,
) -> anyhow::Result<()> {
    match cmd {
        PackageCmd::Register {
            manifest,
            allowed_groups,
        } => {
            let bytes = std::fs::read(&manifest).map_err(|cause| super::InputFileError {
                path: manifest.display().to_string(),
                cause,
            })?;
            let signed = shoal_proto::SignedManifest::decode(&bytes)
                .with_context(|| format!("{} is not a signed manifest", manifest.display()))?;
            let r = client
                .register_package(pb::RegisterPackageRequest {
                    manifest: Some(signed.to_pb()),
                    allowed_groups,
                })
                .await?
                .into_inner();
            let id = hex::encode(&r.content_id);
            if json {
                println!("{}", serde_json::json!({"content_id": id}));
            } else {
                println!("registered {id}");
            }
        }
        PackageCmd::Withdraw { package } => {
            client
                .withdraw_package(pb::WithdrawPackageRequest {
                    package: package.clone(),
                })
                .await?;
            if json {
                println!("{}", serde_json::json!({"withdrawn": package}));
            } else {
                println!("withdrew {package}");
            }
        }
    }
    Ok(())
}

pub async fn catalog(
    client: &mut AdminClient<Channel>,
    json: bool,
    text: Option<String>,
    labels: Vec<String>,
) -> anyhow::Result<()> {
    let labels = super::parse_labels(&labels)?;
    let r = client
        .search_catalog(pb::SearchCatalogRequest {
            text: text.unwrap_or_default(),
            labels,
            limit: 0,
        })
        .await?
        .into_inner();
    if json {
        let v: Vec<_> = r
            .entries
            .iter()
            .map(|e| {
                serde_json::json!({"name": e.name, "version": e.version, "content_id": hex::encode(&e.content_id),
                    "total_size": e.total_size, "allowed_groups": e.allowed_groups, "withdrawn": e.withdrawn,
                    "labels": e.labels.iter().map(|l| (l.key.clone(), l.value.clone())).collect::<std::collections::BTreeMap<_, _>>(),
                    "registered_unix_ms": e.registered_unix_ms})
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
    } else {
        println!("{:<40} {:>14} {:<20} STATE", "PACKAGE", "BYTES", "GROUPS");
        for e in r.entries {
            println!(
                "{:<40} {:>14} {:<20} {}",
                format!("{}@{}", e.name, e.version),
                e.total_size,
                if e.allowed_groups.is_empty() {
                    "(all)".to_owned()
                } else {
                    e.allowed_groups.join(",")
                },
                if e.withdrawn {
                    "withdrawn"
                } else {
                    "available"
                }
            );
        }
    }
    Ok(())
}

pub struct AssignArgs {
    pub package: String,
    pub group: String,
    pub deadline: Option<String>,
    pub waves: String,
    pub pin: bool,
}

pub async fn assign(
    client: &mut AdminClient<Channel>,
    json: bool,
    a: AssignArgs,
) -> anyhow::Result<()> {
    let waves_percent = shoal_controller::rollout::parse_waves(&a.waves).context("--waves")?;
    let deadline_unix_ms = match a.deadline {
        None => 0,
        Some(d) => {
            shoal_controller::now_ms()
                + shoal_proto::units::parse_duration(&d)
                    .map_err(|e| {
                        anyhow::anyhow!("--deadline {d:?}: {e} (a duration from now, e.g. 12h)")
                    })?
                    .as_millis() as i64
        }
    };
    let r = client
        .assign(pb::AssignRequest {
            package: a.package.clone(),
            group: a.group.clone(),
            deadline_unix_ms,
            waves_percent: waves_percent.clone(),
            pin: a.pin,
        })
        .await?
        .into_inner();
    if json {
        println!(
            "{}",
            serde_json::json!({"rollout_id": r.rollout_id, "waves": waves_percent})
        );
    } else {
        println!(
            "assigned {} to {} (rollout {}, waves {:?} %)",
            a.package, a.group, r.rollout_id, waves_percent
        );
    }
    Ok(())
}

pub async fn rollout(
    client: &mut AdminClient<Channel>,
    json: bool,
    cmd: RolloutCmd,
) -> anyhow::Result<()> {
    let RolloutCmd::Status { package, group } = cmd;
    let r = client
        .rollout_status(pb::RolloutStatusRequest {
            package,
            group: group.unwrap_or_default(),
        })
        .await?
        .into_inner();
    if json {
        let agents: Vec<_> = r
            .agents
            .iter()
            .map(|a| {
                serde_json::json!({"agent_id": a.agent_id, "state": state_name(a.state), "error": a.error,
                    "online": a.online, "wave": a.wave, "bytes_done": a.bytes_done, "bytes_total": a.bytes_total})
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"package": r.package, "group": r.group, "current_wave": r.current_wave,
                "done": r.done, "active": r.active, "failed": r.failed, "offline": r.offline,
                "pending": r.pending, "agents": agents})
        );
        return Ok(());
    }
    println!(
        "{} to {}: wave {} released; {} done, {} active, {} failed, {} offline, {} pending",
        r.package, r.group, r.current_wave, r.done, r.active, r.failed, r.offline, r.pending
    );
    println!(
        "{:<24} {:>4} {:<8} {:<7} {:>7} ERROR",
        "AGENT", "WAVE", "STATE", "ONLINE", "PCT"
    );
    for a in r.agents {
        let pct = if a.bytes_total == 0 {
            0.0
        } else {
            100.0 * a.bytes_done as f64 / a.bytes_total as f64
        };
        println!(
            "{:<24} {:>4} {:<8} {:<7} {:>6.1}% {}",
            a.agent_id,
            a.wave,
            state_name(a.state),
            a.online,
            pct,
            a.error
        );
    }
    Ok(())
}

//! Commands that talk to the local agent over its control socket:
//! status, peers, list, fetch, publish, search, pause/resume/cancel/remove,
//! pin/unpin, limits, events.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use shoal_proto::pb::local_control_client::LocalControlClient;
use shoal_proto::units::{Bytes, parse_rate};
use shoal_proto::{ContentId, pb};
use tonic::transport::{Channel, Endpoint};

use super::exit::{self, CliError};
use super::output::Output;

type State = pb::package_status::State;

/// Default control socket of a system-wide agent.
pub const DEFAULT_SOCKET: &str = "/var/lib/shoal/agent.sock";

#[derive(Debug, Subcommand)]
pub enum LocalCommand {
    /// The agent's identity, peers, transfers, limits and cache.
    Status,
    /// Peers the agent knows, and how it found them.
    Peers,
    /// Packages the agent holds or is fetching; with --catalog, the
    /// controller's catalog instead.
    List {
        /// List the controller's catalog (what this agent may fetch).
        #[arg(long)]
        catalog: bool,
        /// With --catalog: only packages with this label, key=value
        /// (repeatable).
        #[arg(long = "label", requires = "catalog")]
        labels: Vec<String>,
    },
    /// Fetch a package by name@version or content id.
    Fetch {
        package: String,
        /// Wait and show progress until it completes.
        #[arg(long)]
        wait: bool,
        /// Higher runs first.
        #[arg(long, default_value_t = 0)]
        priority: i32,
        /// Never evict it to make room.
        #[arg(long)]
        pin: bool,
    },
    /// Seed a package from local content (checked chunk by chunk first).
    Publish {
        manifest: PathBuf,
        content: PathBuf,
    },
    /// Ask the agent, its peers and the controller's catalog for packages
    /// whose name@version contains TEXT.
    Search {
        text: String,
        /// Catalog entries only with this label, key=value (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// Pause a transfer.
    Pause {
        package: String,
    },
    /// Resume a paused or failed transfer.
    Resume {
        package: String,
    },
    /// Cancel a transfer and delete what it fetched.
    Cancel {
        package: String,
    },
    /// Delete a package from the cache.
    Remove {
        package: String,
    },
    /// Keep a package from eviction.
    Pin {
        package: String,
    },
    Unpin {
        package: String,
    },
    /// Change limits at run time.
    #[command(subcommand)]
    Limits(LimitsCommand),
    /// Follow the agent's events.
    Events,
}

#[derive(Debug, Subcommand)]
pub enum LimitsCommand {
    Set {
        /// e.g. 50Mbit/s, 10MiB/s, unlimited.
        #[arg(long, value_parser = |s: &str| parse_rate(s).map_err(|e| e.to_string()))]
        upload: Option<u64>,
        #[arg(long, value_parser = |s: &str| parse_rate(s).map_err(|e| e.to_string()))]
        download: Option<u64>,
        #[arg(long)]
        max_downloads: Option<u32>,
    },
}

async fn connect(socket: &Path) -> Result<LocalControlClient<Channel>, CliError> {
    let path = socket.to_owned();
    let unavailable = |e: &dyn std::fmt::Display| {
        CliError::new(
            exit::UNAVAILABLE,
            anyhow::anyhow!(
                "cannot reach the agent at {}: {e}; is shoal-agent running (and is --socket or SHOAL_SOCKET right)?",
                socket.display()
            ),
        )
    };
    #[cfg(unix)]
    {
        let channel = Endpoint::from_static("http://local.agent")
            .connect_with_connector(tower::service_fn(move |_| {
                let p = path.clone();
                async move {
                    let s = tokio::net::UnixStream::connect(p).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                }
            }))
            .await
            .map_err(|e| unavailable(&crate::transport::client::error_chain(&e)))?;
        Ok(LocalControlClient::new(channel))
    }
    #[cfg(not(unix))]
    {
        let _ = (path, Endpoint::from_static("http://local.agent"));
        Err(unavailable(
            &"Unix sockets are not available on this platform",
        ))
    }
}

fn status_err(s: tonic::Status) -> CliError {
    let code = match s.code() {
        tonic::Code::NotFound => exit::NO_INPUT,
        tonic::Code::InvalidArgument => exit::USAGE,
        tonic::Code::PermissionDenied | tonic::Code::FailedPrecondition => exit::FAILED,
        tonic::Code::Unavailable => exit::UNAVAILABLE,
        _ => exit::SOFTWARE,
    };
    CliError::new(code, anyhow::anyhow!("{}", s.message()))
}

fn state_name(s: i32) -> &'static str {
    match State::try_from(s) {
        Ok(State::Queued) => "queued",
        Ok(State::Downloading) => "downloading",
        Ok(State::Paused) => "paused",
        Ok(State::Complete) => "complete",
        Ok(State::Failed) => "failed",
        _ => "unknown",
    }
}

fn short_id(b: &[u8]) -> String {
    ContentId::from_slice(b)
        .map(|c| c.short())
        .unwrap_or_default()
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::new(exit::SOFTWARE, e))
}

pub fn run(cmd: LocalCommand, socket: &Path, out: Output) -> Result<u8, CliError> {
    runtime()?.block_on(run_async(cmd, socket, out))
}

async fn run_async(cmd: LocalCommand, socket: &Path, out: Output) -> Result<u8, CliError> {
    let mut c = connect(socket).await?;
    match cmd {
        LocalCommand::Status => {
            let s = c
                .status(pb::StatusRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            if out.json {
                out.json(&json!({
                    "agent_id": s.agent_id, "groups": s.groups, "version": s.version,
                    "listen": s.listen_addrs, "peers": s.peers, "packages": s.packages,
                    "active_transfers": s.active_transfers, "queued_transfers": s.queued_transfers,
                    "upload_rate": s.upload_rate, "download_rate": s.download_rate,
                    "cache_bytes_used": s.cache_bytes_used, "cache_quota_bytes": s.cache_quota_bytes,
                    "bytes_received": s.bytes_received, "bytes_sent": s.bytes_sent,
                    "data_dir": s.data_dir, "uptime_seconds": s.uptime_seconds,
                }));
            } else {
                let rate = |r: u64| {
                    if r == 0 {
                        "unlimited".to_owned()
                    } else {
                        format!("{}/s", Bytes(r))
                    }
                };
                println!(
                    "agent      {} (groups: {})",
                    s.agent_id,
                    s.groups.join(", ")
                );
                println!("version    {}, up {} s", s.version, s.uptime_seconds);
                println!("listen     {}", s.listen_addrs.join(", "));
                println!("peers      {}", s.peers);
                println!(
                    "packages   {} ({} downloading, {} queued)",
                    s.packages, s.active_transfers, s.queued_transfers
                );
                println!(
                    "limits     upload {}, download {}",
                    rate(s.upload_rate),
                    rate(s.download_rate)
                );
                let quota = if s.cache_quota_bytes == 0 {
                    "no quota".to_owned()
                } else {
                    Bytes(s.cache_quota_bytes).to_string()
                };
                println!(
                    "cache      {} of {quota} in {}",
                    Bytes(s.cache_bytes_used),
                    s.data_dir
                );
                println!(
                    "traffic    received {}, sent {}",
                    Bytes(s.bytes_received),
                    Bytes(s.bytes_sent)
                );
            }
        }
        LocalCommand::Peers => {
            let p = c
                .peers(pb::PeersRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            if out.json {
                let v: Vec<_> = p.peers.iter().map(|p| json!({
                    "agent_id": p.agent_id, "addrs": p.addrs, "source": p.source,
                    "cert_fingerprint": p.cert_fingerprint, "banned": p.banned, "seconds_since_seen": p.seconds_since_seen,
                })).collect();
                out.json(&json!(v));
            } else if p.peers.is_empty() {
                println!(
                    "no peers known (mDNS finds peers on the LAN; add static peers across subnets)"
                );
            } else {
                println!("{:<24} {:<8} {:<24} seen", "peer", "source", "address");
                for p in &p.peers {
                    println!(
                        "{:<24} {:<8} {:<24} {} s ago{}",
                        p.agent_id,
                        p.source,
                        p.addrs.first().cloned().unwrap_or_default(),
                        p.seconds_since_seen,
                        if p.banned { "  BANNED" } else { "" }
                    );
                }
            }
        }
        LocalCommand::List {
            catalog: true,
            labels,
        } => {
            let r = c
                .search(pb::LocalSearchRequest {
                    text: String::new(),
                    labels: parse_labels(&labels)?,
                    catalog_only: true,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            if !r.has_controller {
                return Err(CliError::new(
                    exit::UNAVAILABLE,
                    anyhow::anyhow!(
                        "this agent has no controller session; the catalog is the controller's (see `shoal status`)"
                    ),
                ));
            }
            if !r.catalog_error.is_empty() {
                return Err(CliError::new(
                    exit::UNAVAILABLE,
                    anyhow::anyhow!("the controller's catalog: {}", r.catalog_error),
                ));
            }
            print_catalog(&r.catalog, out);
        }
        LocalCommand::List { .. } => {
            let l = c
                .list(pb::ListRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            if out.json {
                let v: Vec<_> = l.packages.iter().zip(&l.paths).map(|(p, path)| json!({
                    "name": p.name, "version": p.version,
                    "content_id": ContentId::from_slice(&p.content_id).map(|c| c.to_string()),
                    "state": state_name(p.state), "bytes_total": p.bytes_total, "bytes_done": p.bytes_done,
                    "pinned": p.pinned, "error": p.error, "path": path,
                })).collect();
                out.json(&json!(v));
            } else if l.packages.is_empty() {
                println!("no packages");
            } else {
                println!(
                    "{:<32} {:<12} {:<12} {:>7}  path",
                    "package", "id", "state", "done"
                );
                for (p, path) in l.packages.iter().zip(&l.paths) {
                    let pct = if p.bytes_total == 0 {
                        100.0
                    } else {
                        p.bytes_done as f64 * 100.0 / p.bytes_total as f64
                    };
                    println!(
                        "{:<32} {:<12} {:<12} {:>6.1}%  {}{}{}",
                        format!("{}@{}", p.name, p.version),
                        short_id(&p.content_id),
                        state_name(p.state),
                        pct,
                        path,
                        if p.pinned { " (pinned)" } else { "" },
                        if p.error.is_empty() {
                            String::new()
                        } else {
                            format!(" error: {}", p.error)
                        }
                    );
                }
            }
        }
        LocalCommand::Fetch {
            package,
            wait,
            priority,
            pin,
        } => {
            let r = c
                .fetch(pb::FetchRequest {
                    package: package.clone(),
                    priority,
                    pin,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let nv = format!("{}@{}", r.name, r.version);
            if !wait {
                if out.json {
                    out.json(&json!({"ok": true, "package": nv, "content_id": ContentId::from_slice(&r.content_id).map(|c| c.to_string()), "already_complete": r.already_complete}));
                } else if r.already_complete {
                    println!("{nv} is already here");
                } else {
                    println!(
                        "fetching {nv} ({}); follow it with `shoal fetch {nv} --wait`",
                        Bytes(r.total_size)
                    );
                }
                return Ok(exit::OK);
            }
            return watch(&mut c, &nv, out).await;
        }
        LocalCommand::Publish { manifest, content } => {
            let signed = super::pkg::read_signed(&manifest)?;
            let content = std::path::absolute(&content)
                .map_err(|e| CliError::io(e, format!("resolving {}", content.display())))?;
            let r = c
                .publish(pb::PublishRequest {
                    manifest: Some(signed.to_pb()),
                    content_path: content.display().to_string(),
                })
                .await
                .map_err(status_err)?
                .into_inner();
            if out.json {
                out.json(&json!({"ok": true, "name": r.name, "version": r.version, "content_id": ContentId::from_slice(&r.content_id).map(|c| c.to_string())}));
            } else {
                println!(
                    "seeding {}@{} from {}",
                    r.name,
                    r.version,
                    content.display()
                );
            }
        }
        LocalCommand::Search { text, labels } => {
            let r = c
                .search(pb::LocalSearchRequest {
                    text,
                    labels: parse_labels(&labels)?,
                    catalog_only: false,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            if out.json {
                let v: Vec<_> = r.hits.iter().filter_map(|h| h.package.as_ref().map(|p| json!({
                    "agent_id": h.agent_id, "name": p.name, "version": p.version,
                    "content_id": ContentId::from_slice(&p.content_id).map(|c| c.to_string()),
                    "total_size": p.total_size, "chunks_held": p.chunks_held, "chunk_count": p.chunk_count,
                }))).collect();
                out.json(&json!({"hits": v, "peers_asked": r.peers_asked, "peers_answered": r.peers_answered,
                    "catalog": catalog_json(&r.catalog), "catalog_error": r.catalog_error}));
            } else {
                println!(
                    "{} hit(s); asked {} peer(s), {} answered",
                    r.hits.len(),
                    r.peers_asked,
                    r.peers_answered
                );
                for h in &r.hits {
                    if let Some(p) = &h.package {
                        println!(
                            "  {:<32} {:>10}  {:>5.1}% on {}",
                            format!("{}@{}", p.name, p.version),
                            Bytes(p.total_size),
                            p.chunks_held as f64 * 100.0 / p.chunk_count.max(1) as f64,
                            h.agent_id
                        );
                    }
                }
                if r.has_controller {
                    if r.catalog_error.is_empty() {
                        println!("{} in the controller's catalog", r.catalog.len());
                        print_catalog_table(&r.catalog);
                    } else {
                        println!("the controller's catalog: {}", r.catalog_error);
                    }
                }
            }
        }
        LocalCommand::Pause { package } => {
            control(
                &mut c,
                package,
                pb::control_request::Action::Pause,
                "paused",
                out,
            )
            .await?
        }
        LocalCommand::Resume { package } => {
            control(
                &mut c,
                package,
                pb::control_request::Action::Resume,
                "resumed",
                out,
            )
            .await?
        }
        LocalCommand::Cancel { package } => {
            control(
                &mut c,
                package,
                pb::control_request::Action::Cancel,
                "cancelled",
                out,
            )
            .await?
        }
        LocalCommand::Remove { package } => {
            control(
                &mut c,
                package,
                pb::control_request::Action::Remove,
                "removed",
                out,
            )
            .await?
        }
        LocalCommand::Pin { package } => {
            control(
                &mut c,
                package,
                pb::control_request::Action::Pin,
                "pinned",
                out,
            )
            .await?
        }
        LocalCommand::Unpin { package } => {
            control(
                &mut c,
                package,
                pb::control_request::Action::Unpin,
                "unpinned",
                out,
            )
            .await?
        }
        LocalCommand::Limits(LimitsCommand::Set {
            upload,
            download,
            max_downloads,
        }) => {
            if upload.is_none() && download.is_none() && max_downloads.is_none() {
                return Err(CliError::usage(
                    "give at least one of --upload, --download, --max-downloads",
                ));
            }
            let r = c
                .set_limits(pb::SetLimitsRequest {
                    upload_rate: upload,
                    download_rate: download,
                    max_concurrent_downloads: max_downloads,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            if out.json {
                out.json(&json!({"upload_rate": r.upload_rate, "download_rate": r.download_rate, "max_concurrent_downloads": r.max_concurrent_downloads}));
            } else {
                let rate = |r: u64| {
                    if r == 0 {
                        "unlimited".to_owned()
                    } else {
                        format!("{}/s", Bytes(r))
                    }
                };
                println!(
                    "upload {}, download {}, {} concurrent downloads",
                    rate(r.upload_rate),
                    rate(r.download_rate),
                    r.max_concurrent_downloads
                );
            }
        }
        LocalCommand::Events => {
            let mut s = c
                .events(pb::EventsRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            while let Some(ev) = s.message().await.map_err(status_err)? {
                if out.json {
                    println!(
                        "{}",
                        json!({"at_unix_ms": ev.at_unix_ms, "kind": ev.kind, "package": ev.package, "message": ev.message})
                    );
                } else {
                    println!("{} {:<20} {}", ev.at_unix_ms, ev.kind, ev.message);
                }
            }
        }
    }
    Ok(exit::OK)
}

async fn control(
    c: &mut LocalControlClient<Channel>,
    package: String,
    action: pb::control_request::Action,
    done: &str,
    out: Output,
) -> Result<(), CliError> {
    c.control(pb::ControlRequest {
        package: package.clone(),
        action: action as i32,
    })
    .await
    .map_err(status_err)?;
    if out.json {
        out.json(&json!({"ok": true, "package": package, "action": done}));
    } else {
        println!("{package}: {done}");
    }
    Ok(())
}

/// Follows a transfer with a progress bar until it ends.
async fn watch(
    c: &mut LocalControlClient<Channel>,
    package: &str,
    out: Output,
) -> Result<u8, CliError> {
    let mut s = c
        .watch_transfer(pb::WatchTransferRequest {
            package: package.to_owned(),
        })
        .await
        .map_err(status_err)?
        .into_inner();
    let target = if out.json || out.quiet {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let bar = ProgressBar::with_draw_target(Some(0), target);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:.bold} [{bar:30}] {percent:>3}% {bytes}/{total_bytes} {bytes_per_sec:>11} {msg} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(package.to_owned());
    bar.enable_steady_tick(Duration::from_millis(250));
    let mut last = None;
    while let Some(p) = s.message().await.map_err(status_err)? {
        bar.set_length(p.bytes_total);
        bar.set_position(p.bytes_done);
        bar.set_message(format!("{} peers", p.peers));
        last = Some(p);
    }
    bar.finish_and_clear();
    let Some(p) = last else {
        return Err(CliError::new(
            exit::SOFTWARE,
            anyhow::anyhow!("the agent ended the progress stream without a word"),
        ));
    };
    let state = State::try_from(p.state).unwrap_or(State::Unspecified);
    if out.json {
        out.json(&json!({
            "ok": state == State::Complete, "package": package, "state": state_name(p.state),
            "bytes_total": p.bytes_total, "path": p.path, "error": p.error,
        }));
    } else {
        match state {
            State::Complete => println!(
                "{package}: complete, {} at {}",
                Bytes(p.bytes_total),
                p.path
            ),
            _ => println!(
                "{package}: {}{}",
                state_name(p.state),
                if p.error.is_empty() {
                    String::new()
                } else {
                    format!(": {}", p.error)
                }
            ),
        }
    }
    Ok(match state {
        State::Complete => exit::OK,
        // EX_TEMPFAIL: paused (disk full, quota): try again later.
        State::Paused => 75,
        _ => exit::FAILED,
    })
}

/// `key=value` labels from the command line.
fn parse_labels(labels: &[String]) -> Result<Vec<pb::Label>, CliError> {
    shoal_proto::labels::parse_labels(labels).map_err(|e| CliError::usage(format!("--label: {e}")))
}

fn catalog_json(entries: &[pb::CatalogEntry]) -> serde_json::Value {
    json!(entries
        .iter()
        .map(|e| json!({
            "name": e.name, "version": e.version,
            "content_id": ContentId::from_slice(&e.content_id).map(|c| c.to_string()),
            "total_size": e.total_size, "allowed_groups": e.allowed_groups,
            "labels": e.labels.iter().map(|l| (l.key.clone(), json!(l.value))).collect::<serde_json::Map<_, _>>(),
            "registered_unix_ms": e.registered_unix_ms,
        }))
        .collect::<Vec<_>>())
}

fn print_catalog_table(entries: &[pb::CatalogEntry]) {
    for e in entries {
        let labels: Vec<String> = e
            .labels
            .iter()
            .map(|l| format!("{}={}", l.key, l.value))
            .collect();
        println!(
            "  {:<32} {:>10}  {}{}",
            format!("{}@{}", e.name, e.version),
            Bytes(e.total_size),
            if e.allowed_groups.is_empty() {
                String::new()
            } else {
                format!("groups {} ", e.allowed_groups.join(","))
            },
            labels.join(" ")
        );
    }
}

fn print_catalog(entries: &[pb::CatalogEntry], out: Output) {
    if out.json {
        out.json(&catalog_json(entries));
    } else if entries.is_empty() {
        println!("the catalog has no packages for this agent");
    } else {
        print_catalog_table(entries);
    }
}

//! The agent: wiring every part together, and taking it down in order.
//!
//! Start-up: identity and TLS → store (resumes; downloads re-verify) → swarm
//! listener → saved controller state (revocations, roster) → swarm service
//! → discovery → controller session → transfer queue (resumes downloads)
//! → local API.
//! Shutdown: stop accepting and cancel every task (one token), wait for
//! them with a deadline, flush the store.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Server;

use crate::config::AgentConfig;
use crate::control::policy::{Baseline, PolicyApplier};
use crate::control::{self, ControlTask, SessionState};
use crate::discovery::{self, PeerTable, mdns};
use crate::enroll::controller_client_config;
use crate::events::Events;
use crate::limits::RateLimiter;
use crate::local_api::LocalApi;
use crate::store::{PackageState, Store, StoreError};
use crate::swarm::{
    Counters, SwarmContext, locality::LocalNets, pool::PeerPool, reputation::Reputation,
    service::SwarmService,
};
use crate::transfers::{self, Transfers};
use crate::transport::client::Connector;
use crate::transport::tls::{DenyList, TlsError, TlsIdentity};
use crate::transport::{self, server::tls_incoming};

/// How long shutdown waits for tasks before giving up on them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {cause}")]
    Listen {
        addr: SocketAddr,
        cause: std::io::Error,
    },
    #[error("local API socket {path}: {cause}")]
    Socket {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
}

/// Why a package could not be published.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    #[error(transparent)]
    Verify(#[from] shoal_proto::VerifyError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    ctx: Arc<SwarmContext>,
    transfers: Transfers,
    listen: SocketAddr,
    socket: PathBuf,
    controller: Option<Arc<SessionState>>,
    metrics_addr: Option<SocketAddr>,
}

impl Agent {
    /// Starts every part; returns once the agent is serving.
    pub async fn start(config: AgentConfig) -> Result<Self, StartError> {
        let tls = TlsIdentity::load(&config.tls)?;
        let identity = tls.identity.clone();
        let store = Store::open(&config.data_dir, config.limits.cache_quota).await?;
        store.set_direct_io(config.direct_io);

        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|cause| StartError::Listen {
                    addr: config.listen,
                    cause,
                })?;
        let listen = listener.local_addr().map_err(|cause| StartError::Listen {
            addr: config.listen,
            cause,
        })?;
        let deny = Arc::new(DenyList::new(config.deny.clone()));
        let server_tls = tls.server_config(deny.clone())?;
        let client_tls = tls.client_config(deny.clone())?;
        let controller_tls = match config.controller {
            Some(_) => Some(controller_client_config(&tls)?),
            None => None,
        };

        let tasks = TaskTracker::new();
        let cancel = CancellationToken::new();
        let peers = Arc::new(PeerTable::new(&identity.agent_id));
        discovery::add_static_peers(&peers, &config.static_peers);
        // What the controller last said, before any peer can connect.
        if config.controller.is_some() {
            control::restore(
                &config.data_dir,
                &deny,
                &config.deny,
                &peers,
                &identity.agent_id,
            );
        }

        let mut local_addrs: Vec<IpAddr> = config.advertise.iter().map(|a| a.ip()).collect();
        if !listen.ip().is_unspecified() {
            local_addrs.push(listen.ip());
        }
        let ctx = Arc::new(SwarmContext {
            identity: identity.clone(),
            store,
            peers: peers.clone(),
            pool: PeerPool::new(Connector::new(client_tls)),
            reputation: Reputation::new(config.swarm.ban_threshold, config.swarm.ban_duration),
            upload_limit: RateLimiter::new(config.limits.upload_rate),
            download_limit: RateLimiter::new(config.limits.download_rate),
            upload_slots: Arc::new(Semaphore::new(config.limits.upload_slots as usize)),
            upload_slot_count: config.limits.upload_slots,
            trusted: RwLock::new(config.trusted_publishers.clone()),
            settings: config.swarm.clone(),
            events: Events::new(),
            deny,
            access: Default::default(),
            controller: Default::default(),
            counters: Counters::default(),
            local_nets: LocalNets::discover(&local_addrs),
            tasks: tasks.clone(),
            cancel: cancel.clone(),
        });
        if config.controller.is_some() {
            control::restore_access(&config.data_dir, &ctx.access);
        }

        // Swarm service.
        let incoming = tls_incoming(listener, server_tls, cancel.clone(), &tasks);
        let swarm = Server::builder()
            .initial_stream_window_size(Some(transport::STREAM_WINDOW))
            .initial_connection_window_size(Some(transport::CONNECTION_WINDOW))
            .max_frame_size(Some(transport::MAX_FRAME))
            .http2_keepalive_interval(Some(transport::KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(transport::KEEPALIVE_TIMEOUT))
            .add_service(SwarmService::new(ctx.clone()).into_server())
            .serve_with_incoming_shutdown(incoming, cancel.clone().cancelled_owned());
        tasks.spawn(async move {
            if let Err(e) = swarm.await {
                tracing::error!("swarm service stopped: {e}");
            }
        });

        // Discovery.
        if config.mdns {
            let ann = mdns::Announcement {
                agent_id: identity.agent_id.clone(),
                port: listen.port(),
                addrs: local_addrs.clone(),
                fingerprint: identity.fingerprint.clone(),
            };
            // Multicast can be blocked or absent; static peers (and later
            // the controller's roster) still work, so carry on without it.
            match mdns::start(&ann) {
                Ok((daemon, events)) => {
                    tasks.spawn(mdns::browse_task(
                        daemon,
                        events,
                        peers.clone(),
                        cancel.clone(),
                    ));
                }
                Err(e) => {
                    tracing::warn!("mDNS discovery unavailable, using static peers only: {e}")
                }
            }
        }
        tasks.spawn(discovery::sweep_task(
            peers.clone(),
            config.peer_timeout,
            cancel.clone(),
        ));

        // Bitfields are saved in batches (store::pacing); this is their clock.
        let (store, stop) = (ctx.store.clone(), cancel.clone());
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(crate::store::HAVE_SAVE_INTERVAL);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {
                        let saved = match store.save_due() {
                            Ok(()) => store.sync_state().await,
                            Err(e) => Err(e),
                        };
                        if let Err(e) = saved {
                            tracing::warn!("saving download state: {e}");
                        }
                    }
                }
            }
        });

        // Transfers (resumed below, once the saved policy is in force).
        let transfers = transfers::start(ctx.clone(), config.limits.max_concurrent_downloads);

        // The controller session (after transfers: its policy sets their
        // concurrency).
        let (controller, policy_applier) = match (&config.controller, controller_tls) {
            (Some(settings), Some(controller_tls)) => {
                let state = Arc::new(SessionState::default());
                let policy = Arc::new(PolicyApplier::new(
                    ctx.clone(),
                    transfers.clone(),
                    Baseline {
                        upload_rate: config.limits.upload_rate,
                        download_rate: config.limits.download_rate,
                        max_concurrent_downloads: config.limits.max_concurrent_downloads,
                        cache_quota: config.limits.cache_quota,
                        trusted: config.trusted_publishers.clone(),
                    },
                ));
                // The last policy, until the controller sends one.
                if let Some(p) = control::persist::load_all(&config.data_dir).policy {
                    policy.apply(p).await;
                }
                policy.spawn_clock();
                ControlTask {
                    ctx: ctx.clone(),
                    settings: settings.clone(),
                    tls: controller_tls,
                    configured_deny: config.deny.clone(),
                    advertise: config.advertise.clone(),
                    listen,
                    state: state.clone(),
                    policy: policy.clone(),
                    transfers: transfers.clone(),
                    seq: Default::default(),
                    assignment_errors: Default::default(),
                    renewal: control::renew::Renewal::new(&tls, config.tls.clone()),
                }
                .spawn();
                (Some(state), Some(policy))
            }
            _ => (None, None),
        };

        // Prometheus metrics, before the agent counts as started: a
        // configured endpoint that cannot bind stops start-up.
        let metrics_addr = match config.metrics_listen {
            Some(addr) => {
                let metrics = crate::metrics::AgentMetrics::new(
                    ctx.clone(),
                    transfers.clone(),
                    controller.clone(),
                    policy_applier,
                )?;
                Some(crate::metrics::serve(metrics, addr, &tasks, cancel.clone()).await?)
            }
            None => None,
        };

        // Resume what was downloading before a restart.
        for pkg in ctx.store.list() {
            let r = pkg.record();
            if r.state == PackageState::Downloading {
                tracing::info!(package = %pkg.name_version(), held = pkg.have().count(), "resuming download");
                transfers.enqueue(pkg.clone(), r.priority).await;
            }
        }

        // Local API.
        let api = LocalApi {
            ctx: ctx.clone(),
            transfers: transfers.clone(),
            listen_addrs: vec![listen.to_string()],
            started: Instant::now(),
        };
        serve_local_api(api, &config.socket, &tasks, cancel.clone())?;

        tracing::info!(
            agent = %identity.agent_id,
            groups = ?identity.groups,
            listen = %listen,
            socket = %config.socket.display(),
            mdns = config.mdns,
            static_peers = config.static_peers.len(),
            controller = config.controller.as_ref().map(|c| c.addr.as_str()),
            "agent started"
        );
        Ok(Self {
            ctx,
            transfers,
            listen,
            socket: config.socket.clone(),
            controller,
            metrics_addr,
        })
    }

    /// The controller session's state; `None` when running standalone.
    pub fn controller_session(&self) -> Option<&SessionState> {
        self.controller.as_deref()
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Where `/metrics` is served, if it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn socket_path(&self) -> &std::path::Path {
        &self.socket
    }

    pub fn context(&self) -> &Arc<SwarmContext> {
        &self.ctx
    }

    pub fn transfers(&self) -> &Transfers {
        &self.transfers
    }

    /// Queues a package for download; see [`transfers::request`].
    pub async fn fetch(
        &self,
        reference: &str,
    ) -> Result<Arc<crate::store::Package>, transfers::FetchError> {
        transfers::request(&self.ctx, &self.transfers, reference, 0, false)
            .await
            .map(|(p, _)| p)
    }

    /// Seeds a signed package from content on disk, after verifying the
    /// signature against this agent's trusted publishers and every chunk.
    pub async fn publish(
        &self,
        signed: &shoal_proto::SignedManifest,
        content: &std::path::Path,
    ) -> Result<Arc<crate::store::Package>, PublishError> {
        let verified = signed.verify(&self.ctx.trusted())?;
        Ok(self.ctx.store.add_published(&verified, content).await?)
    }

    /// Stops everything: cancel, wait (bounded), flush.
    pub async fn shutdown(self) {
        tracing::info!(agent = %self.ctx.identity.agent_id, "shutting down");
        self.ctx.cancel.cancel();
        self.ctx.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.ctx.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some tasks did not stop within {SHUTDOWN_GRACE:?}");
        }
        if let Err(e) = self.ctx.store.flush().await {
            tracing::warn!("flushing the store: {e}");
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

#[cfg(unix)]
fn serve_local_api(
    api: LocalApi,
    path: &std::path::Path,
    tasks: &TaskTracker,
    cancel: CancellationToken,
) -> Result<(), StartError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |cause| StartError::Socket {
        path: path.to_owned(),
        cause,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    // A socket left by a crashed agent; a live one would refuse the bind
    // below only if we did not remove it, so check it is not in use first.
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another agent is running with this socket",
            )));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let server = Server::builder()
        .add_service(shoal_proto::pb::local_control_server::LocalControlServer::new(api))
        .serve_with_incoming_shutdown(incoming, cancel.cancelled_owned());
    tasks.spawn(async move {
        if let Err(e) = server.await {
            tracing::error!("local API stopped: {e}");
        }
    });
    Ok(())
}

#[cfg(not(unix))]
fn serve_local_api(
    _api: LocalApi,
    path: &std::path::Path,
    _tasks: &TaskTracker,
    _cancel: CancellationToken,
) -> Result<(), StartError> {
    Err(StartError::Socket {
        path: path.to_owned(),
        cause: std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "the local API needs Unix sockets on this platform",
        ),
    })
}

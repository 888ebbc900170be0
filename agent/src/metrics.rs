//! The agent's Prometheus metrics (names in `docs/metrics.md`).
//!
//! Each agent owns its [`Registry`] (tests run several agents in one
//! process, so nothing is global). Most values already live in the swarm's
//! counters and state; [`AgentMetrics::render`] copies them in at scrape
//! time, so the data path pays nothing for metrics it already counts. The
//! chunk fetch histogram is observed as chunks arrive
//! ([`crate::swarm::Counters::chunk_fetch_seconds`]). [`serve`] runs the
//! HTTP endpoint as a task of the agent, stopped by its cancel token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus::{
    Counter, CounterVec, Encoder, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::control::SessionState;
use crate::control::policy::PolicyApplier;
use crate::discovery::Source;
use crate::store::PackageState;
use crate::swarm::SwarmContext;
use crate::transfers::Transfers;

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    #[error("registering metrics: {0}")]
    Register(#[from] prometheus::Error),
    #[error("metrics endpoint {addr}: {cause} (choose a free address, or `off`)")]
    Bind {
        addr: SocketAddr,
        cause: std::io::Error,
    },
}

/// Every metric of one agent, and what it reads them from.
#[derive(Debug)]
pub struct AgentMetrics {
    registry: Registry,
    ctx: Arc<SwarmContext>,
    transfers: Transfers,
    session: Option<Arc<SessionState>>,
    policy: Option<Arc<PolicyApplier>>,
    received: IntCounterVec,
    sent: IntCounter,
    verified: IntCounter,
    rejected: IntCounter,
    bans: IntCounter,
    errors: IntCounterVec,
    transfer_count: IntGaugeVec,
    packages: IntGaugeVec,
    progress: GaugeVec,
    peers: IntGaugeVec,
    peers_connected: IntGauge,
    rate_wait: CounterVec,
    store_used: IntGauge,
    store_quota: IntGauge,
    controller_connected: IntGauge,
    policy_version: IntGauge,
    cert_expiry: IntGauge,
}

fn counter_to(c: &IntCounter, total: u64) {
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}

fn seconds_to(c: &Counter, total: f64) {
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}

impl AgentMetrics {
    pub fn new(
        ctx: Arc<SwarmContext>,
        transfers: Transfers,
        session: Option<Arc<SessionState>>,
        policy: Option<Arc<PolicyApplier>>,
    ) -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let r = &registry;
        let info = register(
            r,
            IntGaugeVec::new(
                Opts::new("shoal_agent_info", "Build and identity of this agent."),
                &["version", "agent_id"],
            )?,
        )?;
        info.with_label_values(&[env!("CARGO_PKG_VERSION"), ctx.identity.agent_id.as_str()])
            .set(1);
        register(r, ctx.counters.chunk_fetch_seconds.clone())?;
        Ok(Self {
            received: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "shoal_agent_received_bytes_total",
                        "Verified chunk bytes received, from peers, the package's origin, or (local) copied from packages this agent already held.",
                    ),
                    &["source"],
                )?,
            )?,
            sent: register(
                r,
                IntCounter::new(
                    "shoal_agent_sent_bytes_total",
                    "Chunk bytes served to peers.",
                )?,
            )?,
            verified: register(
                r,
                IntCounter::new(
                    "shoal_agent_chunks_verified_total",
                    "Chunks whose hash matched and were stored.",
                )?,
            )?,
            rejected: register(
                r,
                IntCounter::new(
                    "shoal_agent_chunks_rejected_total",
                    "Chunks that failed verification.",
                )?,
            )?,
            bans: register(
                r,
                IntCounter::new(
                    "shoal_agent_peer_bans_total",
                    "Peers banned for bad chunks.",
                )?,
            )?,
            errors: register(
                r,
                IntCounterVec::new(
                    Opts::new("shoal_agent_errors_total", "Errors by where they happened."),
                    &["kind"],
                )?,
            )?,
            transfer_count: register(
                r,
                IntGaugeVec::new(
                    Opts::new("shoal_agent_transfers", "Downloads running and waiting."),
                    &["state"],
                )?,
            )?,
            packages: register(
                r,
                IntGaugeVec::new(
                    Opts::new("shoal_agent_packages", "Packages held, by state."),
                    &["state"],
                )?,
            )?,
            progress: register(
                r,
                GaugeVec::new(
                    Opts::new(
                        "shoal_agent_package_progress_ratio",
                        "Bytes held divided by the package's size.",
                    ),
                    &["package"],
                )?,
            )?,
            peers: register(
                r,
                IntGaugeVec::new(
                    Opts::new("shoal_agent_peers", "Peers known, by how they were found."),
                    &["source"],
                )?,
            )?,
            peers_connected: register(
                r,
                IntGauge::new(
                    "shoal_agent_peers_connected",
                    "Peers with an open connection.",
                )?,
            )?,
            rate_wait: register(
                r,
                CounterVec::new(
                    Opts::new(
                        "shoal_agent_rate_limit_wait_seconds_total",
                        "Time spent waiting on the rate limiters.",
                    ),
                    &["direction"],
                )?,
            )?,
            store_used: register(
                r,
                IntGauge::new(
                    "shoal_agent_store_used_bytes",
                    "Bytes of package content in the cache.",
                )?,
            )?,
            store_quota: register(
                r,
                IntGauge::new("shoal_agent_store_quota_bytes", "Cache quota (0 = none).")?,
            )?,
            controller_connected: register(
                r,
                IntGauge::new(
                    "shoal_agent_controller_connected",
                    "1 while a controller session is open.",
                )?,
            )?,
            policy_version: register(
                r,
                IntGauge::new(
                    "shoal_agent_policy_version",
                    "Version of the controller policy in force (0 = none).",
                )?,
            )?,
            cert_expiry: register(
                r,
                IntGauge::new(
                    "shoal_agent_certificate_expiry_timestamp_seconds",
                    "When this agent's certificate expires, Unix time.",
                )?,
            )?,
            registry,
            ctx,
            transfers,
            session,
            policy,
        })
    }

    /// Copies the current values in.
    fn refresh(&self) {
        let ctx = &self.ctx;
        let c = &ctx.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        counter_to(
            &self.received.with_label_values(&["peer"]),
            load(&c.received_from_peers),
        );
        counter_to(
            &self.received.with_label_values(&["origin"]),
            load(&c.received_from_origin),
        );
        counter_to(
            &self.received.with_label_values(&["local"]),
            load(&c.reused_locally),
        );
        counter_to(&self.sent, load(&c.sent));
        counter_to(&self.verified, load(&c.chunks_verified));
        counter_to(&self.rejected, load(&c.chunks_rejected));
        counter_to(&self.bans, load(&c.peer_bans));
        for (kind, n) in [
            ("fetch", &c.fetch_errors),
            ("store", &c.store_errors),
            ("serve", &c.serve_errors),
            ("controller", &c.controller_errors),
        ] {
            counter_to(&self.errors.with_label_values(&[kind]), load(n));
        }
        let (active, queued) = self.transfers.counts();
        self.transfer_count
            .with_label_values(&["active"])
            .set(i64::from(active));
        self.transfer_count
            .with_label_values(&["queued"])
            .set(i64::from(queued));

        let mut by_state = [0i64; 4];
        self.progress.reset();
        for p in ctx.store.list() {
            let i = match p.record().state {
                PackageState::Downloading => 0,
                PackageState::Paused => 1,
                PackageState::Complete => 2,
                PackageState::Failed => 3,
            };
            by_state[i] += 1;
            let total = p.manifest.total_size;
            let ratio = if total == 0 {
                1.0
            } else {
                p.bytes_done() as f64 / total as f64
            };
            self.progress
                .with_label_values(&[p.name_version().as_str()])
                .set(ratio);
        }
        for (state, n) in ["downloading", "paused", "complete", "failed"]
            .iter()
            .zip(by_state)
        {
            self.packages.with_label_values(&[state]).set(n);
        }

        let mut peers = [0i64; 3];
        for e in ctx.peers.snapshot().values() {
            peers[match e.source {
                Source::Mdns => 0,
                Source::Static => 1,
                Source::Roster => 2,
            }] += 1;
        }
        for (source, n) in ["mdns", "static", "roster"].iter().zip(peers) {
            self.peers.with_label_values(&[source]).set(n);
        }
        self.peers_connected
            .set(i64::try_from(ctx.pool.connected_peers()).unwrap_or(i64::MAX));
        seconds_to(
            &self.rate_wait.with_label_values(&["upload"]),
            ctx.upload_limit.waited().as_secs_f64(),
        );
        seconds_to(
            &self.rate_wait.with_label_values(&["download"]),
            ctx.download_limit.waited().as_secs_f64(),
        );
        self.store_used
            .set(i64::try_from(ctx.store.used_bytes()).unwrap_or(i64::MAX));
        self.store_quota
            .set(i64::try_from(ctx.store.quota()).unwrap_or(i64::MAX));
        self.controller_connected.set(i64::from(
            self.session.as_ref().is_some_and(|s| s.connected()),
        ));
        self.policy_version.set(
            self.policy
                .as_ref()
                .map_or(0, |p| i64::try_from(p.version()).unwrap_or(i64::MAX)),
        );
        let expiry = self
            .session
            .as_ref()
            .map(|s| s.cert_not_after())
            .filter(|&t| t > 0)
            .unwrap_or(ctx.identity.not_after_unix);
        self.cert_expiry.set(expiry);
    }

    /// The text exposition of every metric, current.
    pub fn render(&self) -> String {
        self.refresh();
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!("encoding metrics: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// What `/metrics` answers: the current exposition. Called on the
/// blocking pool, since gathering may read state from disk.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Binds `addr` and serves `/metrics` (from `render`) and `/healthz` on
/// `tasks` until `cancel`; returns the bound address. The agent and the
/// controller both serve their metrics this way.
pub async fn serve_endpoint(
    render: Render,
    addr: SocketAddr,
    tasks: &TaskTracker,
    cancel: CancellationToken,
) -> Result<SocketAddr, MetricsError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|cause| MetricsError::Bind { addr, cause })?;
    let bound = listener
        .local_addr()
        .map_err(|cause| MetricsError::Bind { addr, cause })?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let render = render.clone();
                async move {
                    let text = tokio::task::spawn_blocking(move || render())
                        .await
                        .unwrap_or_default();
                    (
                        [(axum::http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
                        text,
                    )
                }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok\n" }));
    tasks.spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::warn!("metrics endpoint stopped: {e}");
        }
    });
    tracing::info!(addr = %bound, "metrics at /metrics");
    Ok(bound)
}

/// Serves this agent's metrics at `addr` (see [`serve_endpoint`]).
pub async fn serve(
    metrics: AgentMetrics,
    addr: SocketAddr,
    tasks: &TaskTracker,
    cancel: CancellationToken,
) -> Result<SocketAddr, MetricsError> {
    let metrics = Arc::new(metrics);
    serve_endpoint(Arc::new(move || metrics.render()), addr, tasks, cancel).await
}

/// Registers `m` in `r` and hands it back, for building metric structs.
pub fn register<M: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    m: M,
) -> Result<M, prometheus::Error> {
    r.register(Box::new(m.clone()))?;
    Ok(m)
}

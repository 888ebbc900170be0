//! The agent's session with the controller (`AgentControl.Session`).
//!
//! This module owns the one long-lived task that keeps the session up while
//! the agent runs (spawned on the agent's task tracker, stopped by its
//! cancel token). It dials the controller with the agent's certificate,
//! sends `Hello` (version, the addresses peers reach us on), then a
//! `Status` every `controller.status_interval`, and applies what comes
//! back: revocations replace the deny list (configured entries plus
//! revoked agent ids and serials) and drop pooled connections to revoked
//! peers; the roster becomes the peer table's `roster` entries; the policy
//! goes to [`policy::PolicyApplier`] and its version is reported in
//! `Hello` and `Status`; package restrictions and withdrawals go to the
//! swarm's [`crate::swarm::access`] (withdrawn packages not pinned are
//! removed); assignments are fetched ([`assign`]): the manifest from the
//! controller, verified against the trusted publishers, the content from
//! the swarm. Each status report carries a sequence number the controller
//! acknowledges.
//!
//! The last revocations, roster, policy, restrictions and withdrawals are
//! saved under `<data_dir>/controller/` ([`persist`]) and applied at start
//! by [`restore`] and [`restore_access`], before the swarm serves, so an agent restarted while the controller is down still
//! refuses revoked peers. A lost session is retried with jittered
//! exponential backoff from 1 s up to `controller.reconnect_max`.

pub mod apply;
pub mod assign;
pub mod link;
pub mod persist;
pub mod policy;
pub mod renew;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_proto::pb;
use shoal_proto::pb::agent_control_client::AgentControlClient;
use shoal_proto::pb::controller_update::Update;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::config::ControllerSettings;
use crate::discovery::PeerTable;
use crate::swarm::SwarmContext;
use crate::transport::client::Connector;
use crate::transport::tls::DenyList;
use crate::transport::{CONNECT_TIMEOUT, HANDSHAKE_TIMEOUT};

pub use apply::{apply_revocations, apply_roster, deny_entries};

/// Reports waiting to be sent; a full queue means the controller is not
/// reading, and a status report is skipped rather than queued.
const REPORT_QUEUE: usize = 4;
/// Largest update accepted (a roster of thousands of peers fits).
const MAX_UPDATE: usize = 16 << 20;
/// Opening the session (after the TLS connection) gives up after this.
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);
/// Resolving the controller's name to learn our route to it.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// A session that lasted this long resets the backoff to its start.
const STABLE_SESSION: Duration = Duration::from_secs(10);
/// The first reconnection wait (before jitter).
const BACKOFF_START: Duration = Duration::from_secs(1);

/// The session as others see it: cheap to read at any time.
#[derive(Debug, Default)]
pub struct SessionState {
    connected: AtomicBool,
    /// The agent certificate's expiry, Unix seconds (0 = not known yet).
    cert_not_after: std::sync::atomic::AtomicI64,
    opened: AtomicU64,
    updates: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl SessionState {
    /// Whether a session is open right now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Expiry of the certificate in force, Unix seconds; 0 before the
    /// session task starts.
    pub fn cert_not_after(&self) -> i64 {
        self.cert_not_after.load(Ordering::Relaxed)
    }

    /// Sessions opened since start.
    pub fn sessions_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Updates received from the controller since start.
    pub fn updates_received(&self) -> u64 {
        self.updates.load(Ordering::Relaxed)
    }

    /// Why the last session ended or could not open, if one did.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_open(&self) {
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.connected.store(true, Ordering::Relaxed);
    }

    /// Records why the session is down; returns whether it was open.
    fn set_down(&self, reason: String) -> bool {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
        self.connected.swap(false, Ordering::Relaxed)
    }
}

/// Why a session ended or could not open.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("cannot reach the controller: {0}")]
    Connect(String),
    #[error("the controller refused the session: {0}")]
    Refused(String),
    #[error("the session broke: {0}")]
    Broken(String),
    #[error("the controller closed the session")]
    Closed,
}

fn status_text(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// Applies the saved revocations and roster, if any. Call at start, before
/// the swarm serves.
pub fn restore(
    data_dir: &Path,
    deny: &DenyList,
    configured_deny: &[String],
    peers: &PeerTable,
    self_id: &str,
) {
    let saved = persist::load_all(data_dir);
    if let Some(r) = &saved.revocations {
        apply_revocations(deny, configured_deny, r);
        tracing::info!(
            revoked_agents = ?r.agent_ids,
            revoked_serials = r.serials.len(),
            "applied the saved controller revocations"
        );
    }
    if let Some(r) = &saved.roster {
        let s = apply_roster(peers, self_id, r);
        tracing::info!(peers = s.listed, "restored the saved controller roster");
    }
}

/// Applies the saved package restrictions and withdrawals, if any. Call at
/// start, before the swarm serves.
pub fn restore_access(data_dir: &Path, access: &crate::swarm::access::PackageAccess) {
    let saved = persist::load_all(data_dir);
    if let Some(a) = &saved.acls {
        access.set_acls(a);
    }
    if let Some(w) = &saved.withdrawals {
        access.set_withdrawn(w);
    }
}

/// The session task: what it needs, and where it reports its state.
#[derive(Debug)]
pub struct ControlTask {
    pub ctx: Arc<SwarmContext>,
    pub settings: ControllerSettings,
    /// From [`crate::enroll::controller_client_config`].
    pub tls: Arc<rustls::ClientConfig>,
    /// `tls.deny` from the config: always denied, whatever the controller says.
    pub configured_deny: Vec<String>,
    /// `advertise` from the config.
    pub advertise: Vec<SocketAddr>,
    /// The swarm service's bound address.
    pub listen: SocketAddr,
    pub state: Arc<SessionState>,
    /// Applies the controller's policy (the saved one already applied).
    pub policy: Arc<policy::PolicyApplier>,
    /// Where assigned packages are queued.
    pub transfers: crate::transfers::Transfers,
    /// Numbers status reports.
    pub seq: AtomicU64,
    /// Assignments that could not start, reported as failed.
    pub assignment_errors: assign::AssignmentErrors,
    /// The agent's certificate, renewed over the session before it expires.
    pub renewal: renew::Renewal,
}

impl ControlTask {
    /// Runs the session on the agent's task tracker until it is cancelled.
    pub fn spawn(self) {
        let tasks = self.ctx.tasks.clone();
        tasks.spawn(self.run());
    }

    async fn run(self) {
        let addr = self.settings.addr.clone();
        self.state
            .cert_not_after
            .store(self.renewal.not_after(), Ordering::Relaxed);
        let mut backoff = Backoff::new(self.settings.reconnect_max);
        let mut last_reason: Option<String> = None;
        loop {
            let started = Instant::now();
            let ended = tokio::select! {
                _ = self.ctx.cancel.cancelled() => break,
                e = self.session() => e,
            };
            self.ctx.controller.clear();
            let reason = ended.to_string();
            self.ctx
                .counters
                .controller_errors
                .fetch_add(1, Ordering::Relaxed);
            let was_open = self.state.set_down(reason.clone());
            if was_open || last_reason.as_ref() != Some(&reason) {
                tracing::warn!(controller = %addr, "controller session: {reason}; will reconnect");
            } else {
                tracing::debug!(controller = %addr, "controller session: {reason}");
            }
            last_reason = Some(reason);
            if was_open && started.elapsed() >= STABLE_SESSION {
                backoff.reset();
            }
            let wait = backoff.next_wait();
            tokio::select! {
                _ = self.ctx.cancel.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        self.state.connected.store(false, Ordering::Relaxed);
        tracing::debug!("controller session stopped");
    }

    /// One session, from dialling to its end.
    async fn session(&self) -> SessionError {
        let addr = &self.settings.addr;
        let connector = Connector::new(self.tls.clone());
        let channel = match tokio::time::timeout(
            CONNECT_TIMEOUT + HANDSHAKE_TIMEOUT,
            connector.connect(addr, None),
        )
        .await
        {
            Ok(Ok((channel, _))) => channel,
            Ok(Err(e)) => return SessionError::Connect(e.to_string()),
            Err(_) => return SessionError::Connect(format!("connecting to {addr} timed out")),
        };
        let listen_addrs = self.reachable_addrs().await;
        let (tx, rx) = mpsc::channel(REPORT_QUEUE);
        let hello = pb::agent_report::Report::Hello(pb::Hello {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            listen_addrs: listen_addrs.clone(),
            policy_version: self.policy.version(),
        });
        if tx
            .try_send(pb::AgentReport {
                report: Some(hello),
            })
            .is_err()
        {
            return SessionError::Closed;
        }
        let mut client = AgentControlClient::new(channel).max_decoding_message_size(MAX_UPDATE);
        let manifests = client.clone();
        let mut updates =
            match tokio::time::timeout(OPEN_TIMEOUT, client.session(ReceiverStream::new(rx))).await
            {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(s)) => return SessionError::Refused(status_text(&s)),
                Err(_) => return SessionError::Refused("no answer in time".into()),
            };
        self.state.set_open();
        self.ctx.controller.set(manifests.clone());
        tracing::info!(controller = %addr, ?listen_addrs, "controller session open");

        let mut tick = tokio::time::interval(self.settings.status_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renew_tick = tokio::time::interval(self.renewal.check_every());
        renew_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = renew_tick.tick() => self.renew_if_due(&manifests).await,
                _ = tick.tick() => {
                    if tx.try_send(self.status_report()).is_err() {
                        tracing::debug!("controller not reading; status report skipped");
                    }
                }
                msg = updates.message() => match msg {
                    Ok(Some(u)) => self.apply(u, &tx, &manifests).await,
                    Ok(None) => return SessionError::Closed,
                    Err(s) => return SessionError::Broken(status_text(&s)),
                },
            }
        }
    }

    async fn apply(
        &self,
        update: pb::ControllerUpdate,
        tx: &mpsc::Sender<pb::AgentReport>,
        manifests: &AgentControlClient<tonic::transport::Channel>,
    ) {
        self.state.updates.fetch_add(1, Ordering::Relaxed);
        let ctx = &self.ctx;
        let data_dir = ctx.store.data_dir();
        match update.update {
            Some(Update::Revocations(r)) => {
                apply_revocations(&ctx.deny, &self.configured_deny, &r);
                let dropped = ctx.pool.forget_denied(&ctx.deny);
                tracing::info!(
                    revoked_agents = ?r.agent_ids,
                    revoked_serials = r.serials.len(),
                    dropped_connections = dropped,
                    "controller revocations applied"
                );
                save(data_dir, persist::REVOCATIONS_FILE, &r);
            }
            Some(Update::Roster(r)) => {
                let s = apply_roster(&ctx.peers, &ctx.identity.agent_id, &r);
                tracing::info!(
                    peers = s.listed,
                    added = s.added,
                    removed = s.removed,
                    known_otherwise = s.shadowed,
                    "controller roster applied"
                );
                save(data_dir, persist::ROSTER_FILE, &r);
            }
            Some(Update::Policy(p)) => {
                save(data_dir, persist::POLICY_FILE, &p);
                self.policy.apply(p).await;
                // Report the new version at once, not at the next tick.
                if tx.try_send(self.status_report()).is_err() {
                    tracing::debug!("controller not reading; status report skipped");
                }
            }
            Some(Update::Assignments(a)) => {
                assign::apply(ctx, &self.transfers, manifests, &self.assignment_errors, &a).await;
                if tx.try_send(self.status_report()).is_err() {
                    tracing::debug!("controller not reading; status report skipped");
                }
            }
            Some(Update::Acls(a)) => {
                ctx.access.set_acls(&a);
                tracing::info!(
                    restricted = a.acls.len(),
                    "controller package restrictions applied"
                );
                save(data_dir, persist::ACLS_FILE, &a);
            }
            Some(Update::Withdrawals(w)) => {
                save(data_dir, persist::WITHDRAWALS_FILE, &w);
                for id in ctx.access.set_withdrawn(&w) {
                    assign::withdraw(ctx, &self.transfers, &id).await;
                }
            }
            Some(Update::Ack(a)) => tracing::trace!(seq = a.seq, "status acknowledged"),
            None => tracing::debug!("empty controller update ignored"),
        }
    }

    async fn renew_if_due(&self, client: &AgentControlClient<tonic::transport::Channel>) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if !self.renewal.due(now) {
            return;
        }
        let old = self.renewal.not_after();
        match self.renewal.renew(&mut client.clone()).await {
            Ok(not_after) => {
                self.state
                    .cert_not_after
                    .store(not_after, Ordering::Relaxed);
                tracing::info!(
                    old_not_after_unix = old,
                    not_after_unix = not_after,
                    "certificate renewed"
                )
            }
            Err(e) => tracing::warn!(
                not_after_unix = old,
                "certificate renewal failed, will retry: {e}"
            ),
        }
    }

    fn status_report(&self) -> pb::AgentReport {
        let ctx = &self.ctx;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let status = pb::Status {
            packages: ctx
                .store
                .list()
                .iter()
                .map(|p| crate::local_api::package_status(p))
                .collect(),
            policy_version: self.policy.version(),
            bytes_from_peers: load(&ctx.counters.received_from_peers),
            bytes_from_origin: load(&ctx.counters.received_from_origin),
            bytes_sent: load(&ctx.counters.sent),
            cache_bytes_used: ctx.store.used_bytes(),
            peers_connected: u32::try_from(ctx.pool.connected_peers()).unwrap_or(u32::MAX),
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            assignment_errors: self.assignment_errors.reported(&ctx.store),
        };
        pb::AgentReport {
            report: Some(pb::agent_report::Report::Status(status)),
        }
    }

    /// Where peers reach our swarm service: the configured `advertise`
    /// list; else the listen address; else (listening on every address)
    /// our address on the route to the controller, with the listen port.
    async fn reachable_addrs(&self) -> Vec<String> {
        if !self.advertise.is_empty() {
            return self.advertise.iter().map(ToString::to_string).collect();
        }
        if !self.listen.ip().is_unspecified() {
            return vec![self.listen.to_string()];
        }
        match route_to(&self.settings.addr).await {
            Some(ip) => vec![SocketAddr::new(ip, self.listen.port()).to_string()],
            None => {
                tracing::warn!(
                    "cannot tell which address peers reach this agent on; set `advertise` \
                     so the controller can list it in other agents' rosters"
                );
                Vec::new()
            }
        }
    }
}

fn save(data_dir: &Path, file: &str, msg: &impl prost::Message) {
    if let Err(e) = persist::save(data_dir, file, msg) {
        tracing::warn!("saving controller state: {e}");
    }
}

/// This host's source address towards `addr` (`host:port`), as routing
/// picks it. Sends nothing: connecting a UDP socket only selects a route.
async fn route_to(addr: &str) -> Option<IpAddr> {
    let target = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(addr))
        .await
        .ok()?
        .ok()?
        .next()?;
    let any: SocketAddr = if target.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = tokio::net::UdpSocket::bind(any).await.ok()?;
    socket.connect(target).await.ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

/// Exponential backoff with jitter: each wait is drawn from [d/2, d], d
/// doubling from 1 s up to the maximum.
#[derive(Debug)]
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Self {
            next: BACKOFF_START.min(max),
            max,
        }
    }

    fn reset(&mut self) {
        self.next = BACKOFF_START.min(self.max);
    }

    fn next_wait(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(self.max);
        let half = d / 2;
        let span = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(random_u64() % span.saturating_add(1))
    }
}

/// Enough randomness for jitter, without a dependency: std's hasher keys
/// are random per process and change with every `RandomState`.
fn random_u64() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(Instant::now())
}

#[cfg(test)]
mod tests;

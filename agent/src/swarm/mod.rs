//! The swarm: serving what this agent holds, and fetching packages from
//! many peers at once.
//!
//! [`service`] answers peers (manifests, availability, chunk streams) within
//! upload slots and the upload rate; [`download`] runs one package's
//! download (rarest first via [`picker`], several requests per peer, end
//! game, timeouts, verification, [`reputation`] for bad senders); [`pool`]
//! dials and caches peer connections; [`resolve`] finds and verifies a
//! manifest among peers; [`locality`] tells peers on this host's subnet
//! from those across a router.

pub mod access;
pub mod download;
pub mod locality;
pub mod picker;
pub mod pool;
pub mod reputation;
pub mod resolve;
pub mod reuse;
pub mod scheduling;
pub mod service;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use shoal_proto::TrustedKeys;
use shoal_proto::identity::Identity;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::SwarmSettings;
use crate::discovery::PeerTable;
use crate::events::Events;
use crate::limits::RateLimiter;
use crate::store::Store;
use crate::transport::tls::DenyList;

/// Counters for status and metrics ([`crate::metrics`] reads them).
#[derive(Debug)]
pub struct Counters {
    pub received_from_peers: AtomicU64,
    pub received_from_origin: AtomicU64,
    /// Chunk bytes copied from packages already held ([`reuse`]).
    pub reused_locally: AtomicU64,
    pub sent: AtomicU64,
    pub chunks_verified: AtomicU64,
    pub chunks_rejected: AtomicU64,
    pub peer_bans: AtomicU64,
    /// Chunk requests that failed (not a bad chunk: a broken stream, a
    /// timeout, a refusal other than busy).
    pub fetch_errors: AtomicU64,
    pub store_errors: AtomicU64,
    pub serve_errors: AtomicU64,
    pub controller_errors: AtomicU64,
    /// One chunk, requested to verified.
    pub chunk_fetch_seconds: prometheus::Histogram,
}

/// Chunk fetch buckets: 10 ms (1 MiB on loopback) to 2 min (a 16 MiB
/// chunk behind a throttled link).
const CHUNK_FETCH_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

impl Default for Counters {
    fn default() -> Self {
        let opts = prometheus::HistogramOpts::new(
            "shoal_agent_chunk_fetch_duration_seconds",
            "One chunk request, sent to verified.",
        )
        .buckets(CHUNK_FETCH_BUCKETS.to_vec());
        Self {
            received_from_peers: AtomicU64::default(),
            received_from_origin: AtomicU64::default(),
            reused_locally: AtomicU64::default(),
            sent: AtomicU64::default(),
            chunks_verified: AtomicU64::default(),
            chunks_rejected: AtomicU64::default(),
            peer_bans: AtomicU64::default(),
            fetch_errors: AtomicU64::default(),
            store_errors: AtomicU64::default(),
            serve_errors: AtomicU64::default(),
            controller_errors: AtomicU64::default(),
            chunk_fetch_seconds: prometheus::Histogram::with_opts(opts)
                .expect("static histogram options are valid"),
        }
    }
}

/// What every swarm part shares. Owned by the agent; tasks hold an `Arc`.
#[derive(Debug)]
pub struct SwarmContext {
    pub identity: Identity,
    pub store: Arc<Store>,
    pub peers: Arc<PeerTable>,
    pub pool: pool::PeerPool,
    pub reputation: reputation::Reputation,
    pub upload_limit: RateLimiter,
    pub download_limit: RateLimiter,
    pub upload_slots: Arc<Semaphore>,
    pub upload_slot_count: u32,
    pub trusted: RwLock<TrustedKeys>,
    pub settings: SwarmSettings,
    pub events: Events,
    pub deny: Arc<DenyList>,
    /// Restricted and withdrawn packages, from the controller.
    pub access: access::PackageAccess,
    /// The controller session's client while one is open.
    pub controller: crate::control::link::ControllerLink,
    pub counters: Counters,
    /// This host's networks, to prefer peers on the same subnet.
    pub local_nets: locality::LocalNets,
    pub tasks: TaskTracker,
    pub cancel: CancellationToken,
}

impl SwarmContext {
    pub fn trusted(&self) -> TrustedKeys {
        self.trusted
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether a peer's `host:port` is on one of this host's networks.
    pub fn same_subnet(&self, addr: &str) -> bool {
        addr.parse::<std::net::SocketAddr>()
            .is_ok_and(|sa| self.local_nets.contains(sa.ip()))
    }
}

//! One package's download, as an actor.
//!
//! The actor owns the package's swarm state: which peers hold which chunks,
//! what is in flight where, how fast each peer is. Its tasks (one watch per
//! peer, one task per chunk request) live in its `JoinSet` and die with it.
//! Each request task verifies every chunk's BLAKE3 before writing it; a bad
//! chunk counts against its sender and returns to the pool. Requests that
//! stall past the request timeout are abandoned and their chunks reassigned;
//! a peer that vanishes costs only what it had in flight.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use shoal_proto::pb;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::SwarmContext;
use super::picker::{Only, Picker};
use super::pool::PeerConn;
use super::scheduling::{
    self, BATCH_BYTES, BATCH_CHUNKS, MAX_INFLIGHT_BYTES, MAX_INFLIGHT_REQUESTS,
};
use crate::discovery::{PeerEntry, PeerKey};
use crate::store::{Bitfield, ChunkOutcome, ChunkWriter, Package, StoreError};

/// Chunks the origin declined (it sent them to other peers already) are
/// not asked of it again for this long: by then a peer has them.
const DECLINED_BACKOFF: Duration = Duration::from_secs(3);
/// First retry delay for a peer that could not help; doubles to the max.
const RETRY_MIN: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Consecutive failed requests before a peer is dropped and redialled.
const MAX_PEER_FAILURES: u32 = 3;
/// Messages handled at most between two scheduling passes.
const MSG_BATCH: usize = 64;
/// Progress rate is averaged over this window.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// How a download ended without completing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DownloadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cancelled")]
    Cancelled,
}

enum Msg {
    Snapshot {
        key: PeerKey,
        conn: Box<PeerConn>,
        have: Bitfield,
        origin: bool,
    },
    Have {
        agent: String,
        chunks: Vec<u32>,
    },
    WatchEnded {
        agent: String,
        key: PeerKey,
        error: Option<String>,
    },
    Unavailable {
        key: PeerKey,
        reason: String,
        retry: bool,
    },
    ChunkDone {
        agent: String,
        chunk: u32,
        bytes: u64,
        secs: f64,
    },
    ChunkBad {
        agent: String,
        chunk: u32,
        reason: String,
    },
    RequestEnded {
        agent: String,
        unfinished: Vec<u32>,
        error: Option<String>,
        /// The peer was out of upload slots.
        busy: bool,
        /// The origin declined: these chunks went to other peers already.
        declined: bool,
    },
    StoreFailed(StoreError),
    /// Chunks claimed at start-up were re-hashed; these failed and are no
    /// longer held.
    Reverified {
        dropped: Vec<u32>,
    },
}

struct Peer {
    key: PeerKey,
    conn: PeerConn,
    have: Bitfield,
    origin: bool,
    inflight: usize,
    same_subnet: bool,
    /// Bytes per second, exponentially averaged.
    throughput: f64,
    failures: u32,
    /// Not asked again before this (it said it was busy).
    idle_until: Option<Instant>,
    /// "Busy" answers in a row: each doubles the back-off (up to
    /// [`scheduling::BUSY_BACKOFF_MAX`]), so a swarm of peers whose slots
    /// are all taken does not spend its CPU asking again and again.
    busy_streak: u32,
    /// The last pick for this peer found nothing, under these terms, and
    /// nothing that could change that has happened since: the scheduler
    /// skips it instead of scanning every chunk again. With 30 peers most
    /// have nothing new most of the time, and rescanning each of them on
    /// every message was the agent's largest cost of its own.
    exhausted: Option<PickTerms>,
}

/// What a pick for a peer depended on besides the chunks themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PickTerms {
    unique_only: bool,
    endgame: bool,
}

impl Peer {
    fn window(&self, max: usize) -> usize {
        let idle = self.idle_until.is_some_and(|t| t > Instant::now());
        scheduling::window(self.throughput, idle, max)
    }

    fn rank(&self) -> scheduling::PeerRank {
        scheduling::PeerRank {
            origin: self.origin,
            same_subnet: self.same_subnet,
            throughput: self.throughput,
        }
    }
}

#[derive(Default)]
struct Retry {
    next: Option<Instant>,
    delay: Duration,
    busy: bool,
    connected: bool,
}

struct Download {
    ctx: Arc<SwarmContext>,
    pkg: Arc<Package>,
    have: Bitfield,
    picker: Picker,
    peers: HashMap<String, Peer>,
    dial: HashMap<PeerKey, Retry>,
    inflight: HashMap<u32, Vec<String>>,
    inflight_bytes: u64,
    /// Chunks the origin declined, until when.
    declined: HashMap<u32, Instant>,
    tasks: JoinSet<()>,
    tx: mpsc::Sender<Msg>,
    progress: watch::Sender<pb::TransferProgress>,
    samples: VecDeque<(Instant, u64)>,
    bytes_done: u64,
    /// The download's span; sampled chunk requests get a child of it.
    span: tracing::Span,
    requests: u64,
    /// Chunks claimed at start-up are being re-verified: not complete yet.
    reverifying: bool,
}

/// Runs the download of `pkg` to completion. Returns the stable path.
pub async fn run(
    ctx: Arc<SwarmContext>,
    pkg: Arc<Package>,
    progress: watch::Sender<pb::TransferProgress>,
    cancel: CancellationToken,
) -> Result<PathBuf, DownloadError> {
    let (tx, mut rx) = mpsc::channel(1024);
    // What this host already holds elsewhere need not cross the network.
    let reused = super::reuse::reuse_held_chunks(&ctx.store, &pkg, &cancel).await?;
    ctx.counters
        .reused_locally
        .fetch_add(reused.bytes, Ordering::Relaxed);
    let have = pkg.have();
    let lengths = pkg.manifest.chunks.iter().map(|c| c.length).collect();
    let seed = u64::from_le_bytes(
        blake3::hash(ctx.identity.agent_id.as_bytes()).as_bytes()[..8]
            .try_into()
            .unwrap_or([0; 8]),
    );
    let mut d = Download {
        bytes_done: pkg.bytes_done(),
        picker: Picker::new(lengths, seed),
        have,
        ctx: ctx.clone(),
        pkg,
        peers: HashMap::new(),
        dial: HashMap::new(),
        inflight: HashMap::new(),
        inflight_bytes: 0,
        declined: HashMap::new(),
        tasks: JoinSet::new(),
        tx,
        progress,
        samples: VecDeque::new(),
        span: tracing::Span::current(),
        requests: 0,
        reverifying: false,
    };
    d.start_reverify(&cancel);
    let mut table = ctx.peers.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    d.dial_new_peers();
    loop {
        if d.have.is_complete() && !d.reverifying {
            d.publish_progress();
            let path = ctx.store.complete(&d.pkg).await?;
            return Ok(path);
        }
        d.schedule();
        d.publish_progress();
        tokio::select! {
            _ = cancel.cancelled() => return Err(DownloadError::Cancelled),
            Some(msg) = rx.recv() => {
                // Take what else is queued before scheduling once for all
                // of it: under load messages arrive in bursts.
                let mut next = Some(msg);
                let mut taken = 0;
                while let Some(msg) = next.take() {
                    d.handle(msg)?;
                    taken += 1;
                    if taken < MSG_BATCH {
                        next = rx.try_recv().ok();
                    }
                }
            }
            changed = table.changed() => {
                if changed.is_ok() {
                    d.dial_new_peers();
                }
            }
            _ = tick.tick() => {
                d.dial_new_peers();
                d.sample_rate();
            }
            Some(res) = d.tasks.join_next(), if !d.tasks.is_empty() => {
                if let Err(e) = res
                    && e.is_panic()
                {
                    tracing::error!(package = %d.pkg.name_version(), "a transfer task panicked: {e}");
                }
            }
        }
    }
}

impl Download {
    fn name(&self) -> String {
        self.pkg.name_version()
    }

    /// Re-hashes what the bitfield claimed at start-up alongside the
    /// fetching of the rest (the claimed chunks are not asked for; those
    /// that fail come back as missing).
    fn start_reverify(&mut self, cancel: &CancellationToken) {
        if !self.pkg.has_unverified() {
            return;
        }
        self.reverifying = true;
        let (ctx, pkg, tx, cancel) = (
            self.ctx.clone(),
            self.pkg.clone(),
            self.tx.clone(),
            cancel.clone(),
        );
        self.tasks.spawn(async move {
            let msg = match ctx.store.verify_restored(&pkg, &cancel).await {
                Ok(dropped) => Msg::Reverified { dropped },
                Err(e) => Msg::StoreFailed(e),
            };
            let _ = tx.send(msg).await;
        });
    }

    /// Starts a watch on every known peer we are not already talking to.
    fn dial_new_peers(&mut self) {
        let now = Instant::now();
        let table = self.ctx.peers.snapshot();
        for (key, entry) in table.iter() {
            let r = self.dial.entry(key.clone()).or_default();
            if r.busy || r.connected || r.next.is_some_and(|t| t > now) {
                continue;
            }
            if let Some(id) = &entry.agent_id
                && (self.peers.contains_key(id) || self.ctx.reputation.is_banned(id))
            {
                continue;
            }
            r.busy = true;
            self.tasks.spawn(watch_peer(
                self.ctx.clone(),
                self.pkg.clone(),
                key.clone(),
                entry.clone(),
                self.tx.clone(),
            ));
        }
    }

    fn retry_later(&mut self, key: &str) {
        let r = self.dial.entry(key.to_owned()).or_default();
        r.busy = false;
        r.connected = false;
        r.delay = (r.delay * 2).clamp(RETRY_MIN, RETRY_MAX);
        r.next = Some(Instant::now() + r.delay);
    }

    fn drop_peer(&mut self, agent: &str) {
        if let Some(p) = self.peers.remove(agent) {
            if p.origin {
                if p.same_subnet {
                    // Peers across the router may have what we lack now.
                    self.picker.set_local_origin(false);
                    self.offers_changed();
                }
            } else {
                self.picker.remove_peer(&p.have, p.same_subnet);
                // Rarer chunks may now be ones only the origin holds.
                self.offers_changed();
            }
            self.ctx.pool.forget(&p.conn.addr);
            let key = p.key.clone();
            self.retry_later(&key);
        }
    }

    /// Every peer's next pick must look at the chunks again.
    fn offers_changed(&mut self) {
        for p in self.peers.values_mut() {
            p.exhausted = None;
        }
    }

    fn handle(&mut self, msg: Msg) -> Result<(), StoreError> {
        match msg {
            Msg::Snapshot {
                key,
                conn,
                have,
                origin,
            } => {
                let agent = conn.identity.agent_id.clone();
                self.ctx.peers.contacted(&key);
                if self.peers.contains_key(&agent) || self.ctx.reputation.is_banned(&agent) {
                    // Same agent reached through another source.
                    let r = self.dial.entry(key).or_default();
                    r.busy = false;
                    r.connected = true;
                    return Ok(());
                }
                let r = self.dial.entry(key.clone()).or_default();
                r.busy = false;
                r.connected = true;
                r.delay = Duration::ZERO;
                let same_subnet = self.ctx.same_subnet(&conn.addr);
                if !origin {
                    self.picker.add_peer(&have, same_subnet);
                } else if same_subnet {
                    self.picker.set_local_origin(true);
                }
                tracing::debug!(package = %self.name(), peer = %agent, held = have.count(), same_subnet, "peer joined the swarm");
                self.peers.insert(
                    agent,
                    Peer {
                        key,
                        conn: *conn,
                        have,
                        origin,
                        inflight: 0,
                        same_subnet,
                        throughput: 0.0,
                        failures: 0,
                        idle_until: None,
                        busy_streak: 0,
                        exhausted: None,
                    },
                );
            }
            Msg::Have { agent, chunks } => {
                if let Some(p) = self.peers.get_mut(&agent) {
                    self.ctx.peers.contacted(&p.key);
                    for c in chunks {
                        if p.have.set(c) {
                            if !p.origin {
                                self.picker.add_chunk(c, p.same_subnet);
                            }
                            if !self.have.get(c) {
                                p.exhausted = None;
                            }
                        }
                    }
                }
            }
            Msg::WatchEnded { agent, key, error } => match error {
                // A finished peer ends its stream; its bitfield stays valid.
                None => {}
                Some(e) => {
                    tracing::debug!(package = %self.name(), peer = %agent, "availability stream ended: {e}");
                    if self.peers.get(&agent).is_some_and(|p| p.key == key) {
                        self.drop_peer(&agent);
                    } else {
                        self.retry_later(&key);
                    }
                }
            },
            Msg::Unavailable { key, reason, retry } => {
                tracing::debug!(package = %self.name(), peer = %key, "peer cannot help: {reason}");
                if retry {
                    self.retry_later(&key);
                } else {
                    let r = self.dial.entry(key).or_default();
                    r.busy = false;
                    r.next = Some(Instant::now() + Duration::from_secs(3600));
                }
            }
            Msg::ChunkDone {
                agent,
                chunk,
                bytes,
                secs,
            } => {
                self.inflight.remove(&chunk);
                self.inflight_bytes = self.inflight_bytes.saturating_sub(bytes);
                if self.have.set(chunk) {
                    self.bytes_done += bytes;
                    let c = &self.ctx.counters;
                    c.chunks_verified.fetch_add(1, Ordering::Relaxed);
                    let origin = self.peers.get(&agent).is_some_and(|p| p.origin);
                    let counter = if origin {
                        &c.received_from_origin
                    } else {
                        &c.received_from_peers
                    };
                    counter.fetch_add(bytes, Ordering::Relaxed);
                    c.chunk_fetch_seconds.observe(secs);
                }
                if let Some(p) = self.peers.get_mut(&agent) {
                    self.ctx.peers.contacted(&p.key);
                    p.failures = 0;
                    p.busy_streak = 0;
                    if secs > 0.0 {
                        let rate = bytes as f64 / secs;
                        p.throughput = if p.throughput == 0.0 {
                            rate
                        } else {
                            0.7 * p.throughput + 0.3 * rate
                        };
                    }
                }
            }
            Msg::ChunkBad {
                agent,
                chunk,
                reason,
            } => {
                self.ctx
                    .counters
                    .chunks_rejected
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(package = %self.name(), peer = %agent, chunk, "rejected a chunk: {reason}");
                if self.ctx.reputation.strike(&agent) {
                    self.ctx.counters.peer_bans.fetch_add(1, Ordering::Relaxed);
                    self.ctx.events.emit(
                        "peer_banned",
                        &self.name(),
                        format!("banned {agent}: it sent chunks that fail their hash"),
                    );
                    self.drop_peer(&agent);
                }
            }
            Msg::RequestEnded {
                agent,
                unfinished,
                error,
                busy,
                declined,
            } => {
                if declined {
                    let until = Instant::now() + DECLINED_BACKOFF;
                    for &c in &unfinished {
                        self.declined.insert(c, until);
                    }
                }
                for &c in &unfinished {
                    self.inflight_bytes = self
                        .inflight_bytes
                        .saturating_sub(u64::from(self.pkg.manifest.chunks[c as usize].length));
                }
                if !unfinished.is_empty() {
                    // Chunks back in the pool: any peer may have them.
                    self.offers_changed();
                }
                for c in unfinished {
                    if let Some(who) = self.inflight.get_mut(&c) {
                        who.retain(|w| *w != agent);
                        if who.is_empty() {
                            self.inflight.remove(&c);
                        }
                    }
                }
                let name = self.name();
                let mut drop_it = false;
                if let Some(p) = self.peers.get_mut(&agent) {
                    p.inflight = p.inflight.saturating_sub(1);
                    if busy {
                        // Out of upload slots: normal under load, not a fault.
                        let backoff = scheduling::busy_backoff(p.busy_streak);
                        p.busy_streak += 1;
                        p.idle_until = Some(Instant::now() + backoff);
                        tracing::debug!(package = %name, peer = %agent, ?backoff, "peer busy");
                    } else if declined {
                        // Super-seeding at work, not a fault.
                        tracing::debug!(package = %name, peer = %agent, "origin declined chunks it already sent");
                    } else if let Some(e) = error {
                        self.ctx
                            .counters
                            .fetch_errors
                            .fetch_add(1, Ordering::Relaxed);
                        p.failures += 1;
                        p.throughput *= 0.5;
                        tracing::debug!(package = %name, peer = %agent, "request failed: {e}");
                        drop_it = p.failures >= MAX_PEER_FAILURES;
                    }
                }
                if drop_it {
                    self.drop_peer(&agent);
                }
            }
            Msg::StoreFailed(e) => {
                self.ctx
                    .counters
                    .store_errors
                    .fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
            Msg::Reverified { dropped } => {
                self.reverifying = false;
                for c in dropped {
                    if self.have.clear(c) {
                        self.bytes_done = self
                            .bytes_done
                            .saturating_sub(u64::from(self.pkg.manifest.chunks[c as usize].length));
                    }
                }
                self.picker.held_changed();
                self.offers_changed();
            }
        }
        Ok(())
    }

    /// Gives every peer with a free request slot something to send. Other
    /// peers first; the origin then gets chunks nobody else holds, and
    /// anything only when no other peer has a request in flight.
    fn schedule(&mut self) {
        let n = self.have.len() as usize;
        let max_req = self.ctx.settings.requests_per_peer as usize;
        let now = Instant::now();
        let declined = self.declined.len();
        self.declined.retain(|_, until| *until > now);
        if self.declined.len() != declined {
            // Only the origin is kept from declined chunks.
            for p in self.peers.values_mut().filter(|p| p.origin) {
                p.exhausted = None;
            }
        }
        if self.inflight_bytes >= MAX_INFLIGHT_BYTES {
            return;
        }
        let mut in_flight_requests: usize = self.peers.values().map(|p| p.inflight).sum();
        if in_flight_requests >= MAX_INFLIGHT_REQUESTS {
            return;
        }
        let mut others_busy = self.peers.values().any(|p| !p.origin && p.inflight > 0);
        let mut order: Vec<(scheduling::PeerRank, String)> = self
            .peers
            .iter()
            .filter(|(_, p)| p.inflight < p.window(max_req))
            .map(|(id, p)| (p.rank(), id.clone()))
            .collect();
        order.sort_by(|a, b| scheduling::peer_order(&a.0, &b.0));
        for (_, id) in order {
            while let Some(peer) = self.peers.get(&id) {
                if peer.inflight >= peer.window(max_req)
                    || self.inflight_bytes >= MAX_INFLIGHT_BYTES
                    || in_flight_requests >= MAX_INFLIGHT_REQUESTS
                {
                    break;
                }
                let terms = PickTerms {
                    endgame: self.have.count() as usize + self.inflight.len() >= n,
                    unique_only: peer.origin && others_busy,
                };
                if peer.exhausted == Some(terms) {
                    break;
                }
                let endgame = terms.endgame;
                let only = Only {
                    unique: terms.unique_only,
                    not_local: !peer.same_subnet,
                };
                let no_avoid = HashMap::new();
                let avoid = if peer.origin {
                    &self.declined
                } else {
                    &no_avoid
                };
                let mut batch = self.picker.pick(
                    &peer.have,
                    &self.have,
                    &self.inflight,
                    avoid,
                    BATCH_BYTES,
                    BATCH_CHUNKS,
                    only,
                );
                if batch.is_empty() && endgame {
                    batch.extend(self.picker.pick_endgame(
                        &id,
                        &peer.have,
                        &self.have,
                        &self.inflight,
                        avoid,
                        only,
                    ));
                }
                if batch.is_empty() {
                    if let Some(p) = self.peers.get_mut(&id) {
                        p.exhausted = Some(terms);
                    }
                    break;
                }
                others_busy |= !peer.origin;
                in_flight_requests += 1;
                self.request(&id, batch);
            }
        }
    }

    fn request(&mut self, agent: &str, chunks: Vec<u32>) {
        let Some(peer) = self.peers.get_mut(agent) else {
            return;
        };
        peer.inflight += 1;
        for &c in &chunks {
            self.inflight.entry(c).or_default().push(agent.to_owned());
            self.inflight_bytes += u64::from(self.pkg.manifest.chunks[c as usize].length);
        }
        self.requests += 1;
        tracing::trace!(package = %self.pkg.name_version(), peer = %agent, chunks = chunks.len(), "requesting chunks");
        let every = u64::from(self.ctx.settings.chunk_trace_every);
        let span = if every > 0 && self.requests % every == 1 % every {
            tracing::info_span!(parent: &self.span, "chunk.fetch", peer = %agent, chunks = chunks.len())
        } else {
            tracing::Span::none()
        };
        self.tasks.spawn(tracing::Instrument::instrument(
            fetch(
                self.ctx.clone(),
                self.pkg.clone(),
                agent.to_owned(),
                peer.conn.clone(),
                chunks,
                self.tx.clone(),
            ),
            span,
        ));
    }

    fn sample_rate(&mut self) {
        let now = Instant::now();
        self.samples.push_back((now, self.bytes_done));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            self.samples.pop_front();
        }
    }

    fn publish_progress(&self) {
        let rate = match (self.samples.front(), self.samples.back()) {
            (Some((t0, b0)), Some((t1, b1))) if t1 > t0 => {
                (b1.saturating_sub(*b0)) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        };
        let m = &self.pkg.manifest;
        self.progress.send_modify(|p| {
            p.bytes_done = self.bytes_done;
            p.bytes_total = m.total_size;
            p.chunks_done = self.have.count();
            p.chunks_total = self.have.len();
            p.rate = rate as u64;
            p.peers = self.peers.len() as u32;
        });
    }
}

/// Connects to a peer and relays its availability to the actor.
async fn watch_peer(
    ctx: Arc<SwarmContext>,
    pkg: Arc<Package>,
    key: PeerKey,
    entry: PeerEntry,
    tx: mpsc::Sender<Msg>,
) {
    let fail = |reason: String, retry: bool| Msg::Unavailable {
        key: key.clone(),
        reason,
        retry,
    };
    let mut conn = match ctx.pool.connect(&entry).await {
        Ok(c) => c,
        Err(e) => {
            let _ = tx.send(fail(e.to_string(), true)).await;
            return;
        }
    };
    let agent = conn.identity.agent_id.clone();
    if agent == ctx.identity.agent_id {
        let _ = tx.send(fail("that is this agent".into(), false)).await;
        return;
    }
    if ctx.reputation.is_banned(&agent) {
        let _ = tx.send(fail(format!("{agent} is banned"), false)).await;
        return;
    }
    let req = pb::WatchAvailabilityRequest {
        content_id: bytes::Bytes::copy_from_slice(pkg.id.as_bytes()),
    };
    let mut stream = match conn.client.watch_availability(req).await {
        Ok(s) => s.into_inner(),
        Err(s) => {
            if s.code() != tonic::Code::NotFound {
                ctx.pool.forget(&conn.addr);
            }
            let _ = tx
                .send(fail(format!("{agent}: {}", s.message()), true))
                .await;
            return;
        }
    };
    let n = pkg.manifest.chunks.len() as u32;
    let mut first = true;
    let end = loop {
        let msg = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => break None,
            Err(s) => break Some(s.message().to_owned()),
        };
        let out = match msg.update {
            Some(pb::availability_update::Update::Snapshot(b)) => {
                let Some(have) = (b.chunk_count == n)
                    .then(|| Bitfield::from_bytes(n, &b.bits))
                    .flatten()
                else {
                    break Some("malformed bitfield".into());
                };
                if first {
                    first = false;
                    Msg::Snapshot {
                        key: key.clone(),
                        conn: Box::new(conn.clone()),
                        have,
                        origin: b.origin,
                    }
                } else {
                    Msg::Have {
                        agent: agent.clone(),
                        chunks: have.iter_set().collect(),
                    }
                }
            }
            Some(pb::availability_update::Update::Have(h)) if !first => Msg::Have {
                agent: agent.clone(),
                chunks: h.chunks.into_iter().filter(|&c| c < n).collect(),
            },
            _ => break Some("protocol error: update before snapshot".into()),
        };
        if tx.send(out).await.is_err() {
            return;
        }
    };
    if first {
        let _ = tx
            .send(fail(
                end.unwrap_or_else(|| "empty availability stream".into()),
                true,
            ))
            .await;
        return;
    }
    let _ = tx
        .send(Msg::WatchEnded {
            agent,
            key,
            error: end,
        })
        .await;
}

/// Where one incoming chunk goes while it arrives.
enum Sink {
    Disk(ChunkWriter),
    Memory(BytesMut),
}

/// Fetches `chunks` from one peer, verifying and storing each.
async fn fetch(
    ctx: Arc<SwarmContext>,
    pkg: Arc<Package>,
    agent: String,
    mut conn: PeerConn,
    chunks: Vec<u32>,
    tx: mpsc::Sender<Msg>,
) {
    let timeout = ctx.settings.request_timeout;
    let mut req = tonic::Request::new(pb::FetchChunksRequest {
        content_id: bytes::Bytes::copy_from_slice(pkg.id.as_bytes()),
        chunks: chunks.clone(),
    });
    // Only sampled requests carry their context: the serving peer then
    // records its side under ours.
    let span = tracing::Span::current();
    if !span.is_none() {
        crate::telemetry::inject(&span, req.metadata_mut());
    }
    let mut done = 0usize;
    let mut busy = false;
    let mut declined = false;
    let result: Result<(), String> = async {
        let mut stream = tokio::time::timeout(timeout, conn.client.fetch_chunks(req))
            .await
            .map_err(|_| "timed out waiting for the peer to answer".to_owned())?
            .map_err(|s| {
                busy = s.code() == tonic::Code::ResourceExhausted;
                declined = s.code() == tonic::Code::Aborted;
                format!("{:?}: {}", s.code(), s.message())
            })?
            .into_inner();
        for &c in &chunks {
            let meta = pkg.manifest.chunks[c as usize];
            let len = meta.length as usize;
            // Normally the chunk streams to disk as it arrives. When another
            // request is writing it (end-game), buffer, verify and offer it
            // to the store afterwards.
            let mut sink = match ctx.store.begin_chunk(&pkg, c).await {
                Ok(Some(w)) => Sink::Disk(w),
                Ok(None) => Sink::Memory(BytesMut::with_capacity(len)),
                Err(e) => {
                    let _ = tx.send(Msg::StoreFailed(e)).await;
                    return Err("store failed".into());
                }
            };
            let mut got = 0usize;
            let started = Instant::now();
            while got < len {
                let frame = tokio::time::timeout(timeout, stream.message())
                    .await
                    .map_err(|_| format!("stalled for {timeout:?} in chunk {c}"))?
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                    .ok_or_else(|| format!("stream ended in chunk {c}"))?;
                if frame.chunk != c || frame.offset as usize != got || got + frame.data.len() > len
                {
                    let _ = tx
                        .send(Msg::ChunkBad {
                            agent: agent.clone(),
                            chunk: c,
                            reason: "frame out of sequence".into(),
                        })
                        .await;
                    return Err("protocol error".into());
                }
                ctx.download_limit.acquire(frame.data.len() as u64).await;
                got += frame.data.len();
                match &mut sink {
                    Sink::Disk(w) => {
                        if let Err(e) = w.write(frame.data).await {
                            let _ = tx.send(Msg::StoreFailed(e)).await;
                            return Err("store failed".into());
                        }
                    }
                    Sink::Memory(buf) => buf.extend_from_slice(&frame.data),
                }
            }
            let stored = match sink {
                Sink::Disk(w) => ctx
                    .store
                    .finish_chunk(w)
                    .await
                    .map(|o| o == ChunkOutcome::Stored),
                Sink::Memory(buf) => {
                    let data = buf.freeze();
                    let d = data.clone();
                    let ok = tokio::task::spawn_blocking(move || blake3::hash(&d) == meta.hash)
                        .await
                        .unwrap_or(false);
                    if ok {
                        // false: another request stored it meanwhile; done either way.
                        ctx.store.write_chunk(&pkg, c, data).await.map(|_| true)
                    } else {
                        Ok(false)
                    }
                }
            };
            match stored {
                Ok(true) => {}
                Ok(false) => {
                    let _ = tx
                        .send(Msg::ChunkBad {
                            agent: agent.clone(),
                            chunk: c,
                            reason: "content does not match its hash".into(),
                        })
                        .await;
                    return Err(format!("chunk {c} failed verification"));
                }
                Err(e) => {
                    let _ = tx.send(Msg::StoreFailed(e)).await;
                    return Err("store failed".into());
                }
            }
            done += 1;
            let secs = started.elapsed().as_secs_f64();
            let _ = tx
                .send(Msg::ChunkDone {
                    agent: agent.clone(),
                    chunk: c,
                    bytes: len as u64,
                    secs,
                })
                .await;
        }
        Ok(())
    }
    .await;
    let _ = tx
        .send(Msg::RequestEnded {
            agent,
            unfinished: chunks[done..].to_vec(),
            error: result.err(),
            busy,
            declined,
        })
        .await;
}

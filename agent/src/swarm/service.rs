//! The swarm gRPC service other agents call.

use std::pin::Pin;
use std::sync::Arc;

use shoal_proto::identity::Identity;
use shoal_proto::{ContentId, pb};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::SwarmContext;
use crate::store::{Package, StoreError};
use crate::transport::identities::IdentityCache;

/// Most chunks one FetchChunks request may ask for.
pub const MAX_CHUNKS_PER_REQUEST: usize = 256;
/// Most bytes one FetchChunks request may ask for: bounds what one request
/// ties up an upload slot with.
pub const MAX_BYTES_PER_REQUEST: u64 = 64 << 20;
/// Chunk bytes per frame: well under the gRPC message limit and small
/// enough for smooth rate limiting.
pub const FRAME_BYTES: usize = 512 << 10;
/// Frames buffered per response stream: with [`FRAME_BYTES`], what one
/// upload slot holds in memory besides the frame being read. One is
/// enough to read ahead while HTTP/2 sends; with 8 slots a second cost
/// about 4 MiB of RSS for no throughput.
const FRAME_QUEUE: usize = 1;
/// Have-updates batched into one message at most.
const MAX_HAVE_BATCH: usize = 4096;
/// How long a watch collects have-updates before it sends them. Every
/// chunk a host gains goes to every peer watching it, so unbatched a
/// 30-host swarm sent 30 small messages per chunk per host (about a
/// million for 1 GiB), each a TLS record, TCP segments and wake-ups on
/// both ends: on the 2-core testbed more CPU than the chunks themselves
/// when the chunks are small files. A peer learning of a chunk this much
/// later costs little: a 1 MiB chunk takes 80 ms to send at 100 Mbit/s.
const HAVE_COALESCE: std::time::Duration = std::time::Duration::from_millis(100);
/// How long a watch of a package this agent does not hold waits for it to
/// start downloading here before answering "not held"; the watcher then
/// retries on its own back-off.
const PENDING_WATCH: std::time::Duration = std::time::Duration::from_secs(30);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A response stream that holds its upload slot until HTTP/2 has taken
/// the last frame (or the peer went away). The task reading the chunks
/// finishes as soon as its frames are queued, well before they are on the
/// wire; a slot released then bounded nothing, every peer served dozens of
/// requests at once, each at a sliver of its link, and chunks took many
/// times their link time to arrive and spread. Bound together with the
/// receivers' small stream window ([`crate::transport::STREAM_WINDOW`]),
/// the slot is held until nearly all of the response is delivered.
struct Permitted<S> {
    frames: S,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl<S: Stream + Unpin> Stream for Permitted<S> {
    type Item = S::Item;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        Pin::new(&mut self.frames).poll_next(cx)
    }
}

/// For packages this agent published: for each chunk that went out in
/// full, until when the origin holds it back. The origin declines a chunk
/// it sent recently while others have never gone out (super-seeding), so
/// its upload goes to chunks the swarm lacks and peers spread the rest.
/// Time-bounded, so a peer that cannot reach the one that got the chunk
/// waits a bounded time.
type Seeded = std::collections::HashMap<ContentId, Vec<Option<std::time::Instant>>>;

/// Shortest time the origin prefers unsent chunks over one it just sent.
pub const SUPERSEED_WINDOW: std::time::Duration = std::time::Duration::from_secs(5);
/// The hold-back also lasts this many times as long as sending the chunk
/// took: on slow links a chunk needs that long to spread a few hops, and a
/// fixed window let the origin send many chunks twice (1.57 copies with
/// 30 agents on 30 Mbit/s links).
pub const SUPERSEED_SEND_TIMES: u32 = 4;

/// How long an admitted chunk counts as going out before it is sent: the
/// request's own end (sent, or released by [`Outgoing`]) normally comes
/// first; this only bounds a hold whose request vanished without either.
const GOING_OUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Chunks the origin admitted to one request. Dropped with the request's
/// serving task; chunks it did not send (still marked with `mark`) may go
/// out to the next peer that asks.
struct Outgoing {
    seeded: Arc<std::sync::Mutex<Seeded>>,
    id: ContentId,
    mark: std::time::Instant,
    chunks: Vec<u32>,
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        let mut seeded = self.seeded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sent) = seeded.get_mut(&self.id) {
            for &c in &self.chunks {
                if let Some(slot) = sent.get_mut(c as usize)
                    && *slot == Some(self.mark)
                {
                    *slot = None;
                }
            }
        }
    }
}

/// Serves this agent's packages to its peers.
#[derive(Debug, Clone)]
pub struct SwarmService {
    ctx: Arc<SwarmContext>,
    seeded: Arc<std::sync::Mutex<Seeded>>,
    identities: Arc<IdentityCache>,
}

impl SwarmService {
    pub fn new(ctx: Arc<SwarmContext>) -> Self {
        Self {
            ctx,
            seeded: Arc::default(),
            identities: Arc::default(),
        }
    }

    /// As origin: may these chunks go out now? Not when one of them is
    /// going out, or went out within [`SUPERSEED_WINDOW`], while some chunk
    /// never has (`Err`). When they may, they are marked as going out in
    /// the same step, until sent: two peers asking for the same unsent
    /// chunk at once would otherwise both get it, and in a 30-host swarm
    /// most of the origin's duplicate uploads were exactly that. The guard
    /// releases the chunks a request ends without sending.
    fn origin_admits(&self, pkg: &Package, chunks: &[u32]) -> Result<Option<Outgoing>, ()> {
        if pkg.record().external_root.is_none() {
            return Ok(None);
        }
        let mut seeded = self.seeded.lock().unwrap_or_else(|p| p.into_inner());
        let n = pkg.manifest.chunks.len();
        let sent = seeded.entry(pkg.id).or_insert_with(|| vec![None; n]);
        if sent.iter().all(Option::is_some) {
            return Ok(None);
        }
        let now = std::time::Instant::now();
        let held = chunks.iter().any(|&c| {
            sent.get(c as usize)
                .copied()
                .flatten()
                .is_some_and(|until| until > now)
        });
        if held {
            return Err(());
        }
        let mark = now + GOING_OUT;
        for &c in chunks {
            if let Some(slot) = sent.get_mut(c as usize) {
                *slot = Some(mark);
            }
        }
        Ok(Some(Outgoing {
            seeded: self.seeded.clone(),
            id: pkg.id,
            mark,
            chunks: chunks.to_vec(),
        }))
    }

    pub fn into_server(self) -> pb::swarm_server::SwarmServer<Self> {
        pb::swarm_server::SwarmServer::new(self)
            .max_decoding_message_size(crate::transport::MAX_MESSAGE)
            .max_encoding_message_size(crate::transport::MAX_MESSAGE)
    }

    /// Records that a chunk went out in full.
    fn mark_sent(
        seeded: &std::sync::Mutex<Seeded>,
        pkg: &Package,
        chunk: u32,
        took: std::time::Duration,
    ) {
        if pkg.record().external_root.is_none() {
            return;
        }
        let n = pkg.manifest.chunks.len();
        let mut seeded = seeded.lock().unwrap_or_else(|p| p.into_inner());
        let sent = seeded.entry(pkg.id).or_insert_with(|| vec![None; n]);
        if let Some(slot) = sent.get_mut(chunk as usize) {
            let hold = SUPERSEED_WINDOW.max(took * SUPERSEED_SEND_TIMES);
            *slot = Some(std::time::Instant::now() + hold);
        }
    }

    /// The caller, from its verified client certificate. Re-checks the deny
    /// list: it may have changed since the connection was made.
    fn caller<T>(&self, req: &Request<T>) -> Result<Arc<Identity>, Status> {
        let certs = req
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
        let id = self
            .identities
            .identity(leaf)
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        if self.ctx.deny.denies(&id) {
            return Err(Status::permission_denied(format!(
                "agent {} is denied",
                id.agent_id
            )));
        }
        // A peer that calls is alive: discovery need not probe it.
        self.ctx.peers.contacted(&id.agent_id);
        Ok(id)
    }

    /// The package, if `caller` may have it (see [`super::access`]).
    fn package_for(&self, caller: &Identity, content_id: &[u8]) -> Result<Arc<Package>, Status> {
        let pkg = self.package(content_id)?;
        check_access(&self.ctx, caller, &pkg)?;
        Ok(pkg)
    }

    fn package(&self, content_id: &[u8]) -> Result<Arc<Package>, Status> {
        let id = self::content_id(content_id)?;
        self.ctx.store.get(&id).ok_or_else(|| not_held(&id))
    }
}

fn content_id(bytes: &[u8]) -> Result<ContentId, Status> {
    ContentId::from_slice(bytes)
        .ok_or_else(|| Status::invalid_argument("content_id must be 32 bytes"))
}

fn not_held(id: &ContentId) -> Status {
    Status::not_found(format!("package {id} is not held by this agent"))
}

/// Whether `caller` may have `pkg` (see [`super::access`]).
fn check_access(ctx: &SwarmContext, caller: &Identity, pkg: &Package) -> Result<(), Status> {
    ctx.access.check(&pkg.id, caller).map_err(|e| {
        tracing::warn!(peer = %caller.agent_id, package = %pkg.name_version(), "refused: {e}");
        match e {
            super::access::AccessError::Withdrawn(_) => Status::not_found(e.to_string()),
            super::access::AccessError::Restricted { .. } => {
                Status::permission_denied(e.to_string())
            }
        }
    })
}

/// Streams `pkg`'s availability to one watcher: a snapshot, then the
/// chunks it gains, until it is complete, the watcher leaves or the agent
/// stops.
async fn watch_have(
    ctx: &SwarmContext,
    pkg: &Package,
    tx: &mpsc::Sender<Result<pb::AvailabilityUpdate, Status>>,
) {
    // Subscribe before the snapshot so no update falls between them.
    let mut updates = pkg.subscribe_have();
    if tx.send(Ok(snapshot(pkg))).await.is_err() || pkg.have().is_complete() {
        return;
    }
    loop {
        let first = tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            _ = tx.closed() => return,
            u = updates.recv() => u,
        };
        let msg = match first {
            Ok(c) => {
                tokio::select! {
                    _ = ctx.cancel.cancelled() => return,
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(HAVE_COALESCE) => {}
                }
                let mut chunks = vec![c];
                while chunks.len() < MAX_HAVE_BATCH {
                    match updates.try_recv() {
                        Ok(c) => chunks.push(c),
                        Err(_) => break,
                    }
                }
                pb::AvailabilityUpdate {
                    update: Some(pb::availability_update::Update::Have(pb::HaveChunks {
                        chunks,
                    })),
                }
            }
            // Fell behind: a fresh snapshot says it all.
            Err(broadcast::error::RecvError::Lagged(_)) => snapshot(pkg),
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if tx.send(Ok(msg)).await.is_err() || pkg.have().is_complete() {
            return;
        }
    }
}

fn snapshot(pkg: &Package) -> pb::AvailabilityUpdate {
    let have = pkg.have();
    pb::AvailabilityUpdate {
        update: Some(pb::availability_update::Update::Snapshot(pb::Bitfield {
            chunk_count: have.len(),
            bits: bytes::Bytes::copy_from_slice(have.as_bytes()),
            origin: pkg.record().external_root.is_some(),
        })),
    }
}

#[tonic::async_trait]
impl pb::swarm_server::Swarm for SwarmService {
    async fn get_manifest(
        &self,
        req: Request<pb::GetManifestRequest>,
    ) -> Result<Response<pb::GetManifestResponse>, Status> {
        let caller = self.caller(&req)?;
        let reference = req
            .into_inner()
            .package
            .and_then(|p| p.r#ref)
            .ok_or_else(|| Status::invalid_argument("package reference is required"))?;
        let pkg = match reference {
            pb::package_ref::Ref::NameVersion(nv) => {
                if !nv.contains('@') || nv.len() > 256 {
                    return Err(Status::invalid_argument(format!(
                        "{nv:?} is not name@version"
                    )));
                }
                self.ctx
                    .store
                    .list()
                    .into_iter()
                    .find(|p| p.name_version() == nv)
                    .ok_or_else(|| {
                        Status::not_found(format!("package {nv} is not held by this agent"))
                    })?
            }
            pb::package_ref::Ref::ContentId(id) => self.package(&id)?,
        };
        check_access(&self.ctx, &caller, &pkg)?;
        Ok(Response::new(pb::GetManifestResponse {
            content_id: bytes::Bytes::copy_from_slice(pkg.id.as_bytes()),
            manifest: Some(pkg.signed.to_pb()),
            allowed_groups: Vec::new(),
        }))
    }

    type WatchAvailabilityStream = BoxStream<pb::AvailabilityUpdate>;

    async fn watch_availability(
        &self,
        req: Request<pb::WatchAvailabilityRequest>,
    ) -> Result<Response<Self::WatchAvailabilityStream>, Status> {
        let caller = self.caller(&req)?;
        let id = content_id(&req.get_ref().content_id)?;
        // A package not held yet is waited for: peers that start the same
        // download a moment apart ask each other before they have begun.
        let held = self.ctx.store.get(&id);
        if let Some(pkg) = &held {
            check_access(&self.ctx, &caller, pkg)?;
        }
        let ctx = self.ctx.clone();
        let (tx, rx) = mpsc::channel(8);
        self.ctx.tasks.spawn(async move {
            let pkg = match held {
                Some(p) => p,
                None => {
                    let found = tokio::select! {
                        _ = ctx.cancel.cancelled() => return,
                        _ = tx.closed() => return,
                        p = ctx.store.wait_for(&id, PENDING_WATCH) => p,
                    };
                    let checked = found
                        .ok_or_else(|| not_held(&id))
                        .and_then(|p| check_access(&ctx, &caller, &p).map(|()| p));
                    match checked {
                        Ok(p) => p,
                        Err(status) => {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                    }
                }
            };
            watch_have(&ctx, &pkg, &tx).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type FetchChunksStream = BoxStream<pb::ChunkFrame>;

    async fn fetch_chunks(
        &self,
        req: Request<pb::FetchChunksRequest>,
    ) -> Result<Response<Self::FetchChunksStream>, Status> {
        let caller = self.caller(&req)?;
        // A sampled request carries its trace context: serve under it.
        let span = if req.metadata().contains_key("traceparent") {
            let span = tracing::info_span!(
                "chunk.serve",
                peer = %caller.agent_id,
                chunks = req.get_ref().chunks.len()
            );
            crate::telemetry::extract(&span, req.metadata());
            span
        } else {
            tracing::Span::none()
        };
        let r = req.into_inner();
        let pkg = self.package_for(&caller, &r.content_id)?;
        if r.chunks.is_empty() {
            return Err(Status::invalid_argument("no chunks requested"));
        }
        if r.chunks.len() > MAX_CHUNKS_PER_REQUEST {
            return Err(Status::invalid_argument(format!(
                "{} chunks requested; at most {MAX_CHUNKS_PER_REQUEST} per request",
                r.chunks.len()
            )));
        }
        let count = pkg.manifest.chunks.len() as u32;
        let mut bytes = 0u64;
        for &c in &r.chunks {
            if c >= count {
                return Err(Status::invalid_argument(format!(
                    "chunk {c} is out of range: the package has {count} chunks"
                )));
            }
            if !pkg.has_chunk(c) {
                return Err(Status::failed_precondition(format!(
                    "chunk {c} is not held by this agent"
                )));
            }
            bytes += u64::from(pkg.manifest.chunks[c as usize].length);
        }
        if bytes > MAX_BYTES_PER_REQUEST {
            return Err(Status::invalid_argument(format!(
                "{bytes} bytes requested; at most {MAX_BYTES_PER_REQUEST} per request"
            )));
        }
        let permit = self
            .ctx
            .upload_slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                Status::resource_exhausted(format!(
                    "all {} upload slots are busy; ask another peer",
                    self.ctx.upload_slot_count
                ))
            })?;
        let Ok(outgoing) = self.origin_admits(&pkg, &r.chunks) else {
            return Err(Status::aborted(
                "the origin has sent these chunks to other peers already; fetch them from the swarm",
            ));
        };
        self.ctx.store.touch(&pkg);
        let (tx, rx) = mpsc::channel(FRAME_QUEUE);
        let ctx = self.ctx.clone();
        let seeded = self.seeded.clone();
        self.ctx.tasks.spawn(tracing::Instrument::instrument(async move {
            let _outgoing = outgoing;
            for c in r.chunks {
                let started = std::time::Instant::now();
                let mut reader = match ctx.store.chunk_reader(&pkg, c, FRAME_BYTES as u32) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(Status::failed_precondition(e.to_string()))).await;
                        return;
                    }
                };
                loop {
                    let (offset, frame) = match reader.next_piece(&ctx.store).await {
                        Ok(Some(piece)) => piece,
                        Ok(None) => break,
                        Err(e @ StoreError::Corrupt { .. }) => {
                            let _ = tx.send(Err(Status::data_loss(e.to_string()))).await;
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(package = %pkg.name_version(), chunk = c, "serving failed: {e}");
                            ctx.counters.serve_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let _ = tx.send(Err(Status::unavailable(e.to_string()))).await;
                            return;
                        }
                    };
                    tokio::select! {
                        _ = ctx.cancel.cancelled() => return,
                        _ = ctx.upload_limit.acquire(frame.len() as u64) => {}
                    }
                    let len = frame.len() as u64;
                    let msg = pb::ChunkFrame {
                        chunk: c,
                        offset,
                        data: frame,
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        tracing::debug!(peer = %caller.agent_id, "peer hung up mid-transfer");
                        return;
                    }
                    ctx.counters.sent.fetch_add(len, std::sync::atomic::Ordering::Relaxed);
                }
                Self::mark_sent(&seeded, &pkg, c, started.elapsed());
            }
        }, span));
        Ok(Response::new(Box::pin(Permitted {
            frames: ReceiverStream::new(rx),
            _slot: permit,
        })))
    }

    async fn search(
        &self,
        req: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let text = r.text.to_lowercase();
        let limit = if r.limit == 0 { 100 } else { r.limit.min(1000) } as usize;
        let packages = self
            .ctx
            .store
            .list()
            .into_iter()
            .filter(|p| text.is_empty() || p.name_version().to_lowercase().contains(&text))
            .filter(|p| self.ctx.access.check(&p.id, &caller).is_ok())
            .take(limit)
            .map(|p| summary(&p))
            .collect();
        Ok(Response::new(pb::SearchResponse { packages }))
    }
}

/// What a peer tells others about a package it holds.
pub fn summary(p: &Package) -> pb::PackageSummary {
    pb::PackageSummary {
        name: p.manifest.name.clone(),
        version: p.manifest.version.clone(),
        content_id: bytes::Bytes::copy_from_slice(p.id.as_bytes()),
        total_size: p.manifest.total_size,
        chunk_count: p.manifest.chunks.len() as u32,
        chunks_held: p.have().count(),
        labels: p
            .manifest
            .labels
            .iter()
            .map(|(k, v)| pb::Label {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
    }
}

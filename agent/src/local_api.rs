//! The local control API the `shoal` CLI talks to, on a Unix socket that
//! only the agent's user and group can open.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_proto::{SignedManifest, pb};
use tokio::task::JoinSet;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::store::{Package, PackageState};
use crate::swarm::SwarmContext;
use crate::swarm::resolve::ResolveError;
use crate::swarm::service::summary;
use crate::transfers::{self, FetchError, Transfers};

type State = pb::package_status::State;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Progress updates are sent at most this often.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);
/// A peer asked by `search` may take this long to answer.
const SEARCH_TIMEOUT: Duration = Duration::from_secs(3);

/// Serves the local API.
#[derive(Debug, Clone)]
pub struct LocalApi {
    pub ctx: Arc<SwarmContext>,
    pub transfers: Transfers,
    pub listen_addrs: Vec<String>,
    pub started: Instant,
}

fn state_of(pkg: &Package) -> State {
    match pkg.record().state {
        PackageState::Downloading => State::Downloading,
        PackageState::Paused => State::Paused,
        PackageState::Complete => State::Complete,
        PackageState::Failed => State::Failed,
    }
}

pub(crate) fn package_status(pkg: &Package) -> pb::PackageStatus {
    let r = pkg.record();
    pb::PackageStatus {
        content_id: bytes::Bytes::copy_from_slice(pkg.id.as_bytes()),
        name: pkg.manifest.name.clone(),
        version: pkg.manifest.version.clone(),
        state: state_of(pkg) as i32,
        bytes_total: pkg.manifest.total_size,
        bytes_done: pkg.bytes_done(),
        error: r.error,
        pinned: r.pinned,
    }
}

impl LocalApi {
    /// The controller's catalog as this agent may see it: (entries, error,
    /// whether there is a controller session at all).
    async fn search_catalog(
        &self,
        r: &pb::LocalSearchRequest,
    ) -> (Vec<pb::CatalogEntry>, String, bool) {
        let Some(mut client) = self.ctx.controller.client() else {
            return (Vec::new(), String::new(), false);
        };
        let req = pb::SearchCatalogRequest {
            text: r.text.clone(),
            labels: r.labels.clone(),
            limit: 0,
        };
        match tokio::time::timeout(SEARCH_TIMEOUT, client.search_catalog(req)).await {
            Ok(Ok(resp)) => (resp.into_inner().entries, String::new(), true),
            Ok(Err(s)) => (Vec::new(), s.message().to_owned(), true),
            Err(_) => (
                Vec::new(),
                "the controller did not answer in time".into(),
                true,
            ),
        }
    }

    fn find(&self, reference: &str) -> Result<Arc<Package>, Status> {
        self.ctx.store.find(reference).ok_or_else(|| {
            Status::not_found(format!(
                "this agent has no package {reference:?}; see `shoal list`"
            ))
        })
    }

    fn progress_of(&self, pkg: &Package) -> pb::TransferProgress {
        let path = if pkg.record().state == PackageState::Complete {
            match pkg.record().external_root {
                Some(p) => p.display().to_string(),
                None => self
                    .ctx
                    .store
                    .stable_path(&pkg.manifest)
                    .display()
                    .to_string(),
            }
        } else {
            String::new()
        };
        pb::TransferProgress {
            content_id: bytes::Bytes::copy_from_slice(pkg.id.as_bytes()),
            name: pkg.manifest.name.clone(),
            version: pkg.manifest.version.clone(),
            state: state_of(pkg) as i32,
            bytes_total: pkg.manifest.total_size,
            bytes_done: pkg.bytes_done(),
            chunks_total: pkg.manifest.chunks.len() as u32,
            chunks_done: pkg.have().count(),
            error: pkg.record().error,
            path,
            ..Default::default()
        }
    }
}

#[tonic::async_trait]
impl pb::local_control_server::LocalControl for LocalApi {
    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let (active, queued) = self.transfers.counts();
        let c = &self.ctx.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        Ok(Response::new(pb::StatusResponse {
            agent_id: self.ctx.identity.agent_id.clone(),
            groups: self.ctx.identity.groups.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            listen_addrs: self.listen_addrs.clone(),
            peers: self.ctx.peers.snapshot().len() as u32,
            packages: self.ctx.store.list().len() as u32,
            active_transfers: active,
            queued_transfers: queued,
            upload_rate: self.ctx.upload_limit.rate(),
            download_rate: self.ctx.download_limit.rate(),
            cache_bytes_used: self.ctx.store.used_bytes(),
            cache_quota_bytes: self.ctx.store.quota(),
            bytes_received: load(&c.received_from_peers) + load(&c.received_from_origin),
            bytes_sent: load(&c.sent),
            data_dir: self.ctx.store.data_dir().display().to_string(),
            uptime_seconds: self.started.elapsed().as_secs(),
        }))
    }

    async fn peers(
        &self,
        _: Request<pb::PeersRequest>,
    ) -> Result<Response<pb::PeersResponse>, Status> {
        let peers = self
            .ctx
            .peers
            .snapshot()
            .iter()
            .map(|(key, e)| {
                let id = e.agent_id.clone().unwrap_or_else(|| key.clone());
                pb::PeerInfo {
                    banned: self.ctx.reputation.is_banned(&id),
                    agent_id: id,
                    addrs: e.addrs.clone(),
                    source: e.source.as_str().into(),
                    cert_fingerprint: e.fingerprint.clone().unwrap_or_default(),
                    seconds_since_seen: self.ctx.peers.last_heard(key, e).elapsed().as_secs(),
                }
            })
            .collect();
        Ok(Response::new(pb::PeersResponse { peers }))
    }

    async fn list(
        &self,
        _: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let pkgs = self.ctx.store.list();
        let paths = pkgs.iter().map(|p| self.progress_of(p).path).collect();
        Ok(Response::new(pb::ListResponse {
            packages: pkgs.iter().map(|p| package_status(p)).collect(),
            paths,
        }))
    }

    async fn fetch(
        &self,
        req: Request<pb::FetchRequest>,
    ) -> Result<Response<pb::FetchResponse>, Status> {
        let r = req.into_inner();
        let (pkg, already_complete) =
            transfers::request(&self.ctx, &self.transfers, &r.package, r.priority, r.pin)
                .await
                .map_err(|e| match e {
                    FetchError::Resolve(ResolveError::BadReference(_)) => {
                        Status::invalid_argument(e.to_string())
                    }
                    FetchError::Resolve(ResolveError::NoTrustedPublishers) => {
                        Status::failed_precondition(e.to_string())
                    }
                    FetchError::Resolve(_) => Status::not_found(e.to_string()),
                    FetchError::Store(_) => Status::resource_exhausted(e.to_string()),
                    FetchError::Queue(m) => Status::unavailable(m),
                })?;
        Ok(Response::new(pb::FetchResponse {
            content_id: bytes::Bytes::copy_from_slice(pkg.id.as_bytes()),
            name: pkg.manifest.name.clone(),
            version: pkg.manifest.version.clone(),
            total_size: pkg.manifest.total_size,
            already_complete,
        }))
    }

    async fn publish(
        &self,
        req: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let r = req.into_inner();
        let signed = SignedManifest::from(
            r.manifest
                .ok_or_else(|| Status::invalid_argument("manifest is required"))?,
        );
        let verified = signed
            .verify(&self.ctx.trusted())
            .map_err(|e| Status::permission_denied(format!("not publishing: {e}")))?;
        let path = PathBuf::from(&r.content_path);
        if !path.is_absolute() {
            return Err(Status::invalid_argument("content_path must be absolute"));
        }
        let pkg = self
            .ctx
            .store
            .add_published(&verified, &path)
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        self.ctx.events.emit(
            "published",
            &pkg.name_version(),
            format!("seeding {} from {}", pkg.name_version(), path.display()),
        );
        Ok(Response::new(pb::PublishResponse {
            content_id: bytes::Bytes::copy_from_slice(pkg.id.as_bytes()),
            name: pkg.manifest.name.clone(),
            version: pkg.manifest.version.clone(),
        }))
    }

    async fn search(
        &self,
        req: Request<pb::LocalSearchRequest>,
    ) -> Result<Response<pb::LocalSearchResponse>, Status> {
        let r = req.into_inner();
        let (catalog, catalog_error, has_controller) = self.search_catalog(&r).await;
        if r.catalog_only {
            return Ok(Response::new(pb::LocalSearchResponse {
                catalog,
                catalog_error,
                has_controller,
                ..Default::default()
            }));
        }
        let text = r.text;
        let mut hits: Vec<pb::SearchHit> = self
            .ctx
            .store
            .list()
            .into_iter()
            .filter(|p| {
                p.name_version()
                    .to_lowercase()
                    .contains(&text.to_lowercase())
            })
            .map(|p| pb::SearchHit {
                agent_id: self.ctx.identity.agent_id.clone(),
                package: Some(summary(&p)),
            })
            .collect();
        let peers = self.ctx.peers.snapshot();
        let mut asks = JoinSet::new();
        for entry in peers.values() {
            let entry = entry.clone();
            let ctx = self.ctx.clone();
            let text = text.clone();
            asks.spawn(async move {
                let ask = async {
                    let mut conn = ctx.pool.connect(&entry).await.ok()?;
                    let resp = conn
                        .client
                        .search(pb::SearchRequest { text, limit: 100 })
                        .await
                        .ok()?
                        .into_inner();
                    Some((conn.identity.agent_id, resp.packages))
                };
                tokio::time::timeout(SEARCH_TIMEOUT, ask)
                    .await
                    .ok()
                    .flatten()
            });
        }
        let asked = asks.len() as u32;
        let mut answered = 0;
        while let Some(res) = asks.join_next().await {
            if let Ok(Some((agent, packages))) = res {
                answered += 1;
                hits.extend(packages.into_iter().map(|p| pb::SearchHit {
                    agent_id: agent.clone(),
                    package: Some(p),
                }));
            }
        }
        Ok(Response::new(pb::LocalSearchResponse {
            hits,
            peers_asked: asked,
            peers_answered: answered,
            catalog,
            catalog_error,
            has_controller,
        }))
    }

    async fn control(
        &self,
        req: Request<pb::ControlRequest>,
    ) -> Result<Response<pb::ControlResponse>, Status> {
        use pb::control_request::Action;
        let r = req.into_inner();
        let pkg = self.find(&r.package)?;
        let res = match Action::try_from(r.action) {
            Ok(Action::Pause) => self.transfers.pause(pkg.id).await,
            Ok(Action::Resume) => self.transfers.resume(pkg.id).await,
            Ok(Action::Cancel) => {
                if pkg.record().state == PackageState::Complete {
                    return Err(Status::failed_precondition(
                        "the package is complete; use `shoal remove` to delete it",
                    ));
                }
                self.transfers.cancel(pkg.id).await
            }
            Ok(Action::Remove) => {
                if pkg.record().state != PackageState::Complete {
                    self.transfers.cancel(pkg.id).await
                } else {
                    self.ctx
                        .store
                        .remove(&pkg.id)
                        .await
                        .map_err(|e| e.to_string())
                }
            }
            Ok(Action::Pin) => self
                .ctx
                .store
                .set_pinned(&pkg, true)
                .map_err(|e| e.to_string()),
            Ok(Action::Unpin) => self
                .ctx
                .store
                .set_pinned(&pkg, false)
                .map_err(|e| e.to_string()),
            _ => return Err(Status::invalid_argument("unknown action")),
        };
        res.map_err(Status::failed_precondition)?;
        Ok(Response::new(pb::ControlResponse {}))
    }

    async fn set_limits(
        &self,
        req: Request<pb::SetLimitsRequest>,
    ) -> Result<Response<pb::SetLimitsResponse>, Status> {
        let r = req.into_inner();
        if let Some(u) = r.upload_rate {
            self.ctx.upload_limit.set_rate(u);
        }
        if let Some(d) = r.download_rate {
            self.ctx.download_limit.set_rate(d);
        }
        if let Some(n) = r.max_concurrent_downloads {
            if n == 0 {
                return Err(Status::invalid_argument(
                    "max_concurrent_downloads must be at least 1",
                ));
            }
            self.transfers.set_max_concurrent(n).await;
        }
        tracing::info!(
            upload = self.ctx.upload_limit.rate(),
            download = self.ctx.download_limit.rate(),
            max_downloads = self.transfers.max_concurrent(),
            "limits changed"
        );
        Ok(Response::new(pb::SetLimitsResponse {
            upload_rate: self.ctx.upload_limit.rate(),
            download_rate: self.ctx.download_limit.rate(),
            max_concurrent_downloads: self.transfers.max_concurrent(),
        }))
    }

    type WatchTransferStream = BoxStream<pb::TransferProgress>;

    async fn watch_transfer(
        &self,
        req: Request<pb::WatchTransferRequest>,
    ) -> Result<Response<Self::WatchTransferStream>, Status> {
        let pkg = self.find(&req.into_inner().package)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let first = self.progress_of(&pkg);
        let watch = self.transfers.watch(&pkg.id);
        let cancel = self.ctx.cancel.clone();
        let api = self.clone();
        self.ctx.tasks.spawn(async move {
            let terminal = |p: &pb::TransferProgress| {
                matches!(
                    State::try_from(p.state),
                    Ok(State::Complete | State::Failed | State::Paused)
                )
            };
            let Some(mut watch) = watch else {
                let _ = tx.send(Ok(first)).await;
                return;
            };
            loop {
                let mut p = watch.borrow_and_update().clone();
                if State::try_from(p.state) == Ok(State::Complete) {
                    p = api
                        .ctx
                        .store
                        .get(&pkg.id)
                        .map(|pkg| api.progress_of(&pkg))
                        .unwrap_or(p);
                }
                let done = terminal(&p);
                if tx.send(Ok(p)).await.is_err() || done {
                    return;
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tx.closed() => return,
                    r = watch.changed() => if r.is_err() { return },
                }
                tokio::time::sleep(PROGRESS_INTERVAL).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type EventsStream = BoxStream<pb::AgentEvent>;

    async fn events(
        &self,
        _: Request<pb::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        let mut events = self.ctx.events.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let cancel = self.ctx.cancel.clone();
        self.ctx.tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tx.closed() => return,
                    e = events.recv() => match e {
                        Ok(ev) => if tx.send(Ok(ev)).await.is_err() { return },
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            let _ = tx.send(Err(Status::data_loss(format!("missed {n} events")))).await;
                        }
                        Err(_) => return,
                    },
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

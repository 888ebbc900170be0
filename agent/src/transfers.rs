//! The transfer queue: priorities, a cap on concurrent downloads, and
//! pause / resume / cancel. One actor owns it; each running download is a
//! task in its `JoinSet` with its own cancellation token.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use shoal_proto::{ContentId, pb};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::store::{Package, PackageState, StoreError};
use crate::swarm::SwarmContext;
use crate::swarm::download::{self, DownloadError};

type State = pb::package_status::State;

/// Requests to the queue actor.
#[derive(Debug)]
pub enum TransferCommand {
    Enqueue {
        pkg: Arc<Package>,
        priority: i32,
    },
    Pause {
        id: ContentId,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Resume {
        id: ContentId,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Cancel {
        id: ContentId,
        reply: oneshot::Sender<Result<(), String>>,
    },
    SetMaxConcurrent(u32),
}

/// Handle to the queue actor, cheap to clone.
#[derive(Debug, Clone)]
pub struct Transfers {
    inbox: mpsc::Sender<TransferCommand>,
    progress: Arc<Mutex<HashMap<ContentId, watch::Sender<pb::TransferProgress>>>>,
    max: Arc<std::sync::atomic::AtomicU32>,
}

impl Transfers {
    async fn ask(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), String>>) -> TransferCommand,
    ) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.inbox
            .send(make(tx))
            .await
            .map_err(|_| "the agent is shutting down".to_owned())?;
        rx.await
            .map_err(|_| "the agent is shutting down".to_owned())?
    }

    pub async fn enqueue(&self, pkg: Arc<Package>, priority: i32) {
        self.progress_sender(&pkg);
        let _ = self
            .inbox
            .send(TransferCommand::Enqueue { pkg, priority })
            .await;
    }

    pub async fn pause(&self, id: ContentId) -> Result<(), String> {
        self.ask(|reply| TransferCommand::Pause { id, reply }).await
    }

    pub async fn resume(&self, id: ContentId) -> Result<(), String> {
        self.ask(|reply| TransferCommand::Resume { id, reply })
            .await
    }

    pub async fn cancel(&self, id: ContentId) -> Result<(), String> {
        self.ask(|reply| TransferCommand::Cancel { id, reply })
            .await
    }

    pub async fn set_max_concurrent(&self, n: u32) {
        self.max.store(n, std::sync::atomic::Ordering::Relaxed);
        let _ = self.inbox.send(TransferCommand::SetMaxConcurrent(n)).await;
    }

    pub fn max_concurrent(&self) -> u32 {
        self.max.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Live progress of a package this agent has queued or run.
    pub fn watch(&self, id: &ContentId) -> Option<watch::Receiver<pb::TransferProgress>> {
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .map(|s| s.subscribe())
    }

    /// (active, queued)
    pub fn counts(&self) -> (u32, u32) {
        let map = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        let mut active = 0;
        let mut queued = 0;
        for s in map.values() {
            match State::try_from(s.borrow().state) {
                Ok(State::Downloading) => active += 1,
                Ok(State::Queued) => queued += 1,
                _ => {}
            }
        }
        (active, queued)
    }

    fn progress_sender(&self, pkg: &Package) -> watch::Sender<pb::TransferProgress> {
        let mut map = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(pkg.id)
            .or_insert_with(|| {
                watch::channel(pb::TransferProgress {
                    content_id: bytes::Bytes::copy_from_slice(pkg.id.as_bytes()),
                    name: pkg.manifest.name.clone(),
                    version: pkg.manifest.version.clone(),
                    state: State::Queued as i32,
                    bytes_total: pkg.manifest.total_size,
                    bytes_done: pkg.bytes_done(),
                    chunks_total: pkg.manifest.chunks.len() as u32,
                    chunks_done: pkg.have().count(),
                    ..Default::default()
                })
                .0
            })
            .clone()
    }
}

struct Queued {
    pkg: Arc<Package>,
    priority: i32,
    seq: u64,
}

/// Why a running download was stopped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    Pause,
    Cancel,
}

struct Actor {
    ctx: Arc<SwarmContext>,
    handle: Transfers,
    queue: Vec<Queued>,
    seq: u64,
    running: HashMap<ContentId, (CancellationToken, Option<Stop>)>,
    tasks: JoinSet<(ContentId, Result<PathBuf, DownloadError>)>,
    max: usize,
}

/// Starts the queue actor on the agent's task tracker.
pub fn start(ctx: Arc<SwarmContext>, max_concurrent: u32) -> Transfers {
    let (tx, rx) = mpsc::channel(256);
    let handle = Transfers {
        inbox: tx,
        progress: Arc::default(),
        max: Arc::new(max_concurrent.into()),
    };
    let actor = Actor {
        ctx: ctx.clone(),
        handle: handle.clone(),
        queue: Vec::new(),
        seq: 0,
        running: HashMap::new(),
        tasks: JoinSet::new(),
        max: max_concurrent.max(1) as usize,
    };
    ctx.tasks.spawn(actor.run(rx, ctx.cancel.clone()));
    handle
}

impl Actor {
    async fn run(mut self, mut inbox: mpsc::Receiver<TransferCommand>, cancel: CancellationToken) {
        loop {
            self.start_queued();
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                Some((id, result)) = async { self.tasks.join_next().await?.ok() }, if !self.tasks.is_empty() => {
                    self.finished(id, result);
                }
                cmd = inbox.recv() => match cmd {
                    Some(c) => self.command(c).await,
                    None => break,
                },
            }
        }
        for (token, _) in self.running.values() {
            token.cancel();
        }
        while self.tasks.join_next().await.is_some() {}
    }

    fn set_state(&self, pkg: &Package, state: State, error: &str) {
        let s = self.handle.progress_sender(pkg);
        s.send_modify(|p| {
            p.state = state as i32;
            p.error = error.to_owned();
        });
    }

    fn start_queued(&mut self) {
        while self.running.len() < self.max && !self.queue.is_empty() {
            // Highest priority first, then first come.
            let best = self
                .queue
                .iter()
                .enumerate()
                .max_by_key(|(_, q)| (q.priority, std::cmp::Reverse(q.seq)))
                .map(|(i, _)| i);
            let Some(i) = best else { break };
            let q = self.queue.remove(i);
            let token = self.ctx.cancel.child_token();
            self.running.insert(q.pkg.id, (token.clone(), None));
            self.set_state(&q.pkg, State::Downloading, "");
            self.ctx.events.emit(
                "transfer_started",
                &q.pkg.name_version(),
                format!(
                    "downloading {} ({} bytes)",
                    q.pkg.name_version(),
                    q.pkg.manifest.total_size
                ),
            );
            let progress = self.handle.progress_sender(&q.pkg);
            let ctx = self.ctx.clone();
            let pkg = q.pkg.clone();
            // The download's trace: chunk requests and the peers' serving
            // of them hang below it.
            let span = tracing::info_span!(
                "package.download",
                package = %pkg.name_version(),
                content_id = %pkg.id,
                bytes = pkg.manifest.total_size,
            );
            self.tasks.spawn(tracing::Instrument::instrument(
                async move {
                    let id = pkg.id;
                    (id, download::run(ctx, pkg, progress, token).await)
                },
                span,
            ));
        }
    }

    fn finished(&mut self, id: ContentId, result: Result<PathBuf, DownloadError>) {
        let stop = self.running.remove(&id).and_then(|(_, s)| s);
        let Some(pkg) = self.ctx.store.get(&id) else {
            return;
        };
        let name = pkg.name_version();
        match result {
            Ok(path) => {
                let s = self.handle.progress_sender(&pkg);
                s.send_modify(|p| {
                    p.state = State::Complete as i32;
                    p.bytes_done = p.bytes_total;
                    p.chunks_done = p.chunks_total;
                    p.path = path.display().to_string();
                });
                self.ctx.events.emit(
                    "transfer_completed",
                    &name,
                    format!("{name} complete at {}", path.display()),
                );
            }
            Err(DownloadError::Cancelled) => match stop {
                Some(Stop::Cancel) => {}
                _ => {
                    let _ = self.ctx.store.set_state(&pkg, PackageState::Paused, "");
                    self.set_state(&pkg, State::Paused, "");
                }
            },
            Err(DownloadError::Store(e)) => {
                let pausing = matches!(
                    e,
                    StoreError::DiskFull { .. } | StoreError::QuotaExceeded { .. }
                );
                let msg = e.to_string();
                let (state, ps, kind) = if pausing {
                    (PackageState::Paused, State::Paused, "transfer_paused")
                } else {
                    (PackageState::Failed, State::Failed, "transfer_failed")
                };
                let _ = self.ctx.store.set_state(&pkg, state, &msg);
                self.set_state(&pkg, ps, &msg);
                self.ctx.events.emit(kind, &name, msg);
            }
        }
    }

    async fn command(&mut self, cmd: TransferCommand) {
        match cmd {
            TransferCommand::Enqueue { pkg, priority } => {
                if self.running.contains_key(&pkg.id)
                    || self.queue.iter().any(|q| q.pkg.id == pkg.id)
                {
                    return;
                }
                self.seq += 1;
                self.set_state(&pkg, State::Queued, "");
                self.queue.push(Queued {
                    pkg,
                    priority,
                    seq: self.seq,
                });
            }
            TransferCommand::Pause { id, reply } => {
                let r = self.stop(id, Stop::Pause);
                let _ = reply.send(r);
            }
            TransferCommand::Cancel { id, reply } => {
                let r = self.stop(id, Stop::Cancel);
                let r = match r {
                    Ok(()) => {
                        let name = self
                            .ctx
                            .store
                            .get(&id)
                            .map(|p| p.name_version())
                            .unwrap_or_default();
                        // Wait for the task to let go of the files, then delete.
                        self.wait_for(id).await;
                        let res = self.ctx.store.remove(&id).await.map_err(|e| e.to_string());
                        if let Some(s) = self
                            .handle
                            .progress
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&id)
                        {
                            s.send_modify(|p| {
                                p.state = State::Failed as i32;
                                p.error = "cancelled".into();
                            });
                        }
                        self.ctx.events.emit(
                            "transfer_cancelled",
                            &name,
                            format!("{name} cancelled and removed"),
                        );
                        res
                    }
                    e => e,
                };
                let _ = reply.send(r);
            }
            TransferCommand::Resume { id, reply } => {
                let r = match self.ctx.store.get(&id) {
                    None => Err("unknown package".to_owned()),
                    Some(pkg) if pkg.record().state == PackageState::Complete => Ok(()),
                    Some(pkg) => {
                        let _ = self
                            .ctx
                            .store
                            .set_state(&pkg, PackageState::Downloading, "");
                        let priority = pkg.record().priority;
                        Box::pin(self.command(TransferCommand::Enqueue { pkg, priority })).await;
                        Ok(())
                    }
                };
                let _ = reply.send(r);
            }
            TransferCommand::SetMaxConcurrent(n) => self.max = n.max(1) as usize,
        }
    }

    fn stop(&mut self, id: ContentId, how: Stop) -> Result<(), String> {
        if let Some((token, stop)) = self.running.get_mut(&id) {
            *stop = Some(how);
            token.cancel();
            return Ok(());
        }
        if let Some(i) = self.queue.iter().position(|q| q.pkg.id == id) {
            let q = self.queue.remove(i);
            if how == Stop::Pause {
                let _ = self.ctx.store.set_state(&q.pkg, PackageState::Paused, "");
                self.set_state(&q.pkg, State::Paused, "");
            }
            return Ok(());
        }
        match self.ctx.store.get(&id) {
            Some(_) => Ok(()),
            None => Err("unknown package".into()),
        }
    }

    async fn wait_for(&mut self, id: ContentId) {
        while self.running.contains_key(&id) {
            match self.tasks.join_next().await {
                Some(Ok((done, result))) => self.finished(done, result),
                Some(Err(_)) => {}
                None => break,
            }
        }
    }
}

/// Why a fetch could not be queued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    #[error(transparent)]
    Resolve(#[from] crate::swarm::resolve::ResolveError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Queue(String),
}

/// Queues `reference` (name@version or content id) for download: resumes
/// it if known, else finds and verifies its manifest among peers first.
/// Returns the package and whether it was already complete.
pub async fn request(
    ctx: &Arc<SwarmContext>,
    transfers: &Transfers,
    reference: &str,
    priority: i32,
    pin: bool,
) -> Result<(Arc<Package>, bool), FetchError> {
    if let Some(pkg) = ctx.store.find(reference) {
        if pin {
            ctx.store.set_pinned(&pkg, true)?;
        }
        if pkg.record().state == PackageState::Complete {
            return Ok((pkg, true));
        }
        transfers.resume(pkg.id).await.map_err(FetchError::Queue)?;
        return Ok((pkg, false));
    }
    let verified = crate::swarm::resolve::resolve_manifest(ctx, reference).await?;
    let pkg = ctx.store.add_download(&verified, priority, pin).await?;
    transfers.enqueue(pkg.clone(), priority).await;
    Ok((pkg, false))
}

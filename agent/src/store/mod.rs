//! The chunk store: package content in files, package state in sled.
//!
//! Owns where bytes live and what is known about them. Downloads stream
//! chunks in place into preallocated files ([`ChunkWriter`]) and record a
//! chunk in the bitfield only once all of it matches its hash; a restart
//! re-verifies every chunk it finds recorded for an unfinished package, so
//! nothing unverified is ever trusted or served.
//! Finished packages are materialised read-only and linked at a stable
//! path, `<data_dir>/packages/<name>@<version>`. A cache quota evicts the
//! least recently used finished packages that are not pinned.

mod bitfield;
mod checksums;
mod chunk_io;
mod direct;
mod files;
pub mod pacing;
mod state;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use shoal_proto::signing::VerifiedManifest;
use shoal_proto::{ContentId, Manifest, SignedManifest};
use tokio::sync::broadcast;

pub use bitfield::Bitfield;
pub use chunk_io::{ChunkOutcome, ChunkReader, ChunkWriter};
pub use state::{PackageRecord, PackageState};

use state::StateDb;

/// Have-updates buffered per package for availability watchers.
const HAVE_BACKLOG: usize = 4096;
/// Longest a buffered chunk waits for another request writing the same
/// chunk; that request's own stall timeout ends it well before.
const CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(120);
/// A package's last use is recorded at most this often: writing the record
/// (JSON, two sled writes) on every chunk request served was a steady cost
/// of every busy agent, for an order eviction needs only to the minute.
const TOUCH_GRANULARITY_MS: i64 = 60_000;
/// How often the agent checks for bitfields due to be saved (see
/// [`Store::save_due`] and [`pacing`]).
pub const HAVE_SAVE_INTERVAL: std::time::Duration = pacing::SAVE_MIN_INTERVAL;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("state database: {0}")]
    Db(String),
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "disk full writing {path}; free space (or lower the cache quota) and resume the transfer"
    )]
    DiskFull { path: PathBuf },
    #[error(
        "cache quota exceeded: the package needs {need} bytes, {used} of {quota} are in use by pinned or active packages"
    )]
    QuotaExceeded { need: u64, used: u64, quota: u64 },
    #[error("chunk {chunk} is not held")]
    NotHeld { chunk: u32 },
    #[error("chunk {chunk} is out of range (the package has {count})")]
    OutOfRange { chunk: u32, count: u32 },
    #[error("chunk {chunk} on disk no longer matches its hash; it will be fetched again")]
    Corrupt { chunk: u32 },
    #[error("content does not match the manifest: {0}")]
    ContentMismatch(String),
    #[error("internal: {0}")]
    Internal(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |cause| {
        if files::is_disk_full(&cause) {
            StoreError::DiskFull {
                path: path.to_owned(),
            }
        } else {
            StoreError::Io {
                path: path.to_owned(),
                cause,
            }
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Internal(format!("blocking task failed: {e}")))?
}

/// One package known to the store.
#[derive(Debug)]
pub struct Package {
    pub id: ContentId,
    pub manifest: Arc<Manifest>,
    pub signed: SignedManifest,
    root: PathBuf,
    root_is_file: bool,
    have: Mutex<Bitfield>,
    /// Chunks of the bitfield not yet saved to the state database.
    unsaved: Mutex<pacing::Unsaved>,
    /// CRC-32C of chunks verified here, to check them when served.
    checksums: checksums::Checksums,
    /// Chunks a [`ChunkWriter`] is writing right now.
    writing: Mutex<std::collections::HashSet<u32>>,
    claim_released: tokio::sync::Notify,
    have_tx: broadcast::Sender<u32>,
    record: Mutex<PackageRecord>,
    /// Chunks the bitfield claimed at start-up, not hashed since: a crash
    /// may have recorded a chunk whose bytes never reached the disk. The
    /// download re-verifies them ([`Store::verify_restored`]) while it
    /// fetches the rest; serving checks every chunk's hash anyway until
    /// it has a checksum.
    unverified: Mutex<Vec<u32>>,
}

impl Package {
    pub fn have(&self) -> Bitfield {
        self.lock_have().clone()
    }

    pub fn has_chunk(&self, i: u32) -> bool {
        self.lock_have().get(i)
    }

    /// Whether chunks claimed at start-up still wait for re-verification.
    pub fn has_unverified(&self) -> bool {
        !self
            .unverified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Subscribes to chunks verified from now on.
    pub fn subscribe_have(&self) -> broadcast::Receiver<u32> {
        self.have_tx.subscribe()
    }

    pub fn record(&self) -> PackageRecord {
        self.record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn name_version(&self) -> String {
        self.manifest.name_version()
    }

    pub fn bytes_done(&self) -> u64 {
        let have = self.lock_have();
        have.iter_set()
            .map(|i| u64::from(self.manifest.chunks[i as usize].length))
            .sum()
    }

    /// Where the content is (the stable path once complete).
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lock_have(&self) -> std::sync::MutexGuard<'_, Bitfield> {
        self.have.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_unsaved(&self) -> std::sync::MutexGuard<'_, pacing::Unsaved> {
        self.unsaved.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_writing(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<u32>> {
        self.writing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the right to write `chunk`; false if someone holds it.
    fn claim(&self, chunk: u32) -> bool {
        self.lock_writing().insert(chunk)
    }

    fn release_claim(&self, chunk: u32) {
        self.lock_writing().remove(&chunk);
        self.claim_released.notify_waiters();
    }
}

/// The store of one agent.
#[derive(Debug)]
pub struct Store {
    data_dir: PathBuf,
    db: StateDb,
    packages: RwLock<HashMap<ContentId, Arc<Package>>>,
    quota: std::sync::atomic::AtomicU64,
    /// Chunk reads and writes bypass the page cache where possible.
    direct_io: std::sync::atomic::AtomicBool,
    /// Serialises admission (quota accounting and eviction).
    admit: tokio::sync::Mutex<()>,
    /// Bumped whenever a package is admitted, for [`Store::wait_for`].
    admitted: tokio::sync::watch::Sender<u64>,
}

impl Store {
    /// Opens (or creates) the store under `data_dir` and loads what it
    /// holds. Chunks recorded for unfinished packages are held as claimed
    /// and re-verified when their download resumes, not here: hashing
    /// hundreds of MiB before the agent answers kept a restarted agent
    /// silent for over 30 s on a busy host.
    pub async fn open(data_dir: &Path, quota: u64) -> Result<Arc<Self>, StoreError> {
        let dir = data_dir.to_owned();
        let (db, loaded) = blocking(move || {
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            let db = StateDb::open(&dir.join("state"))?;
            let loaded = db.load_all()?;
            Ok((db, loaded))
        })
        .await?;
        let store = Arc::new(Self {
            data_dir: data_dir.to_owned(),
            db,
            packages: RwLock::new(HashMap::new()),
            quota: quota.into(),
            direct_io: true.into(),
            admit: tokio::sync::Mutex::new(()),
            admitted: tokio::sync::watch::Sender::new(0),
        });
        for (id, record, manifest_bytes, have_bytes) in loaded {
            match store.restore(id, record, manifest_bytes, have_bytes).await {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(content_id = %id, "dropping a package that cannot be restored: {e}")
                }
            }
        }
        Ok(store)
    }

    async fn restore(
        self: &Arc<Self>,
        id: ContentId,
        record: PackageRecord,
        manifest_bytes: Vec<u8>,
        have_bytes: Vec<u8>,
    ) -> Result<(), StoreError> {
        let signed =
            SignedManifest::decode(&manifest_bytes).map_err(|e| StoreError::Db(e.to_string()))?;
        if signed.content_id() != id {
            return Err(StoreError::Db(
                "stored manifest does not match its content id".into(),
            ));
        }
        // Signature was checked when the package was admitted; the bytes
        // are ours. Re-validate the structure all the same.
        let manifest = signed
            .manifest_unverified()
            .map_err(|e| StoreError::Db(e.to_string()))?;
        let n = manifest.chunks.len() as u32;
        let (root, root_is_file) = match &record.external_root {
            Some(p) => (p.clone(), p.is_file()),
            None => (self.content_dir(&id), false),
        };
        let have = match record.state {
            PackageState::Complete => Bitfield::full(n),
            _ => Bitfield::from_bytes(n, &have_bytes).unwrap_or_else(|| Bitfield::new(n)),
        };
        let unverified: Vec<u32> = if record.state == PackageState::Complete {
            Vec::new()
        } else {
            have.iter_set().collect()
        };
        tracing::info!(package = %manifest.name_version(), state = ?record.state, held = have.count(), of = n, "restored package");
        let pkg = self.insert(id, manifest, signed, root, root_is_file, have, record);
        *pkg.unverified.lock().unwrap_or_else(|p| p.into_inner()) = unverified;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn insert(
        &self,
        id: ContentId,
        manifest: Manifest,
        signed: SignedManifest,
        root: PathBuf,
        root_is_file: bool,
        have: Bitfield,
        record: PackageRecord,
    ) -> Arc<Package> {
        let unsaved = pacing::Unsaved::new(manifest.total_size);
        let checksums = checksums::Checksums::new(manifest.chunks.len());
        let pkg = Arc::new(Package {
            id,
            manifest: Arc::new(manifest),
            signed,
            root,
            root_is_file,
            have: Mutex::new(have),
            unsaved: Mutex::new(unsaved),
            checksums,
            writing: Mutex::default(),
            claim_released: tokio::sync::Notify::new(),
            have_tx: broadcast::channel(HAVE_BACKLOG).0,
            record: Mutex::new(record),
            unverified: Mutex::default(),
        });
        self.packages
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, pkg.clone());
        self.admitted.send_modify(|n| *n = n.wrapping_add(1));
        pkg
    }

    fn content_dir(&self, id: &ContentId) -> PathBuf {
        self.data_dir.join("content").join(id.to_string())
    }

    /// The stable path of a package: `<data_dir>/packages/<name>@<version>`.
    pub fn stable_path(&self, m: &Manifest) -> PathBuf {
        self.data_dir
            .join("packages")
            .join(format!("{}@{}", m.name.replace('/', "_"), m.version))
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn set_quota(&self, quota: u64) {
        self.quota
            .store(quota, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether chunk I/O bypasses the page cache (`O_DIRECT`) where the
    /// file system allows; on by default.
    pub fn set_direct_io(&self, on: bool) {
        self.direct_io
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn direct_io(&self) -> bool {
        self.direct_io.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn quota(&self) -> u64 {
        self.quota.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn get(&self, id: &ContentId) -> Option<Arc<Package>> {
        self.packages
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// The package once this agent holds it, or starts to download it,
    /// within `limit`. Peers that start the same download a moment apart
    /// ask each other before they have begun; waiting here answers them the
    /// moment there is something, where a refusal had them retry seconds
    /// later.
    pub async fn wait_for(&self, id: &ContentId, limit: Duration) -> Option<Arc<Package>> {
        // Subscribed before the lookup, so an admission between the two
        // still wakes us.
        let mut admitted = self.admitted.subscribe();
        tokio::time::timeout(limit, async {
            loop {
                if let Some(p) = self.get(id) {
                    return Some(p);
                }
                admitted.changed().await.ok()?;
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// Looks up `name@version` or a content id in hex.
    pub fn find(&self, reference: &str) -> Option<Arc<Package>> {
        if let Ok(id) = reference.parse::<ContentId>() {
            return self.get(&id);
        }
        self.list()
            .into_iter()
            .find(|p| p.name_version() == reference)
    }

    pub fn list(&self) -> Vec<Arc<Package>> {
        let mut v: Vec<_> = self
            .packages
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|a| a.name_version());
        v
    }

    /// Bytes the cache holds (content seeded in place does not count).
    pub fn used_bytes(&self) -> u64 {
        self.list()
            .iter()
            .map(|p| p.record())
            .filter(|r| r.external_root.is_none())
            .map(|r| r.total_size)
            .sum()
    }

    fn save_record(
        &self,
        pkg: &Package,
        f: impl FnOnce(&mut PackageRecord),
    ) -> Result<PackageRecord, StoreError> {
        let rec = {
            let mut r = pkg.record.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut r);
            r.clone()
        };
        self.db.put_package(&pkg.id, &rec, None)?;
        Ok(rec)
    }

    /// Admits a package to download: makes room under the quota, creates
    /// its directories and preallocates its large files (small ones are
    /// made by their first write). Returns the existing entry if known.
    pub async fn add_download(
        &self,
        verified: &VerifiedManifest,
        priority: i32,
        pin: bool,
    ) -> Result<Arc<Package>, StoreError> {
        if let Some(p) = self.get(&verified.content_id) {
            return Ok(p);
        }
        let _admit = self.admit.lock().await;
        let need = verified.manifest.total_size;
        self.make_room(need).await?;
        let id = verified.content_id;
        let root = self.content_dir(&id);
        let manifest = verified.manifest.clone();
        let r = root.clone();
        blocking(move || {
            files::prepare(&r, &manifest).map_err(|e| {
                // Leave nothing half-made: a partial tree could hold space.
                let _ = files::remove_tree(&r);
                io_err(&r)(e)
            })
        })
        .await?;
        let record = PackageRecord {
            name: verified.manifest.name.clone(),
            version: verified.manifest.version.clone(),
            state: PackageState::Downloading,
            pinned: pin,
            priority,
            total_size: need,
            last_used_ms: now_ms(),
            external_root: None,
            error: String::new(),
        };
        let n = verified.manifest.chunks.len() as u32;
        self.db
            .put_package(&id, &record, Some(&verified.signed.encode()))?;
        self.db.put_have(&id, Bitfield::new(n).as_bytes())?;
        Ok(self.insert(
            id,
            verified.manifest.clone(),
            verified.signed.clone(),
            root,
            false,
            Bitfield::new(n),
            record,
        ))
    }

    /// Evicts least recently used, finished, unpinned packages until
    /// `need` more bytes fit under the quota.
    async fn make_room(&self, need: u64) -> Result<(), StoreError> {
        let quota = self.quota();
        if quota == 0 {
            return Ok(());
        }
        let mut used = self.used_bytes();
        if used + need <= quota {
            return Ok(());
        }
        let mut candidates: Vec<_> = self
            .list()
            .into_iter()
            .filter(|p| {
                let r = p.record();
                r.state == PackageState::Complete && !r.pinned && r.external_root.is_none()
            })
            .collect();
        candidates.sort_by_key(|p| p.record().last_used_ms);
        for p in candidates {
            if used + need <= quota {
                break;
            }
            tracing::info!(package = %p.name_version(), "evicting to stay under the cache quota");
            used = used.saturating_sub(p.record().total_size);
            self.remove(&p.id).await?;
        }
        if used + need > quota {
            return Err(StoreError::QuotaExceeded { need, used, quota });
        }
        Ok(())
    }

    /// Seeds a package from content outside the store after checking every
    /// chunk of it against the manifest.
    pub async fn add_published(
        &self,
        verified: &VerifiedManifest,
        content: &Path,
    ) -> Result<Arc<Package>, StoreError> {
        let manifest = verified.manifest.clone();
        let path = content.to_owned();
        let report = blocking(move || {
            shoal_proto::package::verify_content(
                &manifest,
                &path,
                shoal_proto::package::default_threads(),
                &(),
            )
            .map_err(|e| StoreError::ContentMismatch(e.to_string()))
        })
        .await?;
        if let Some(p) = report.problems.first() {
            return Err(StoreError::ContentMismatch(format!(
                "{p}{}",
                if report.problems.len() > 1 {
                    format!(" (and {} more)", report.problems.len() - 1)
                } else {
                    String::new()
                }
            )));
        }
        if let Some(existing) = self.get(&verified.content_id) {
            return Ok(existing);
        }
        let id = verified.content_id;
        let record = PackageRecord {
            name: verified.manifest.name.clone(),
            version: verified.manifest.version.clone(),
            state: PackageState::Complete,
            pinned: true,
            priority: 0,
            total_size: verified.manifest.total_size,
            last_used_ms: now_ms(),
            external_root: Some(content.to_owned()),
            error: String::new(),
        };
        self.db
            .put_package(&id, &record, Some(&verified.signed.encode()))?;
        let n = verified.manifest.chunks.len() as u32;
        let pkg = self.insert(
            id,
            verified.manifest.clone(),
            verified.signed.clone(),
            content.to_owned(),
            content.is_file(),
            Bitfield::full(n),
            record,
        );
        self.db.flush().await?;
        Ok(pkg)
    }

    /// Stores a whole chunk the caller holds in memory. Returns whether it
    /// was new. While another request writes the chunk, waits for it to
    /// finish: it either stores the chunk or gives way.
    pub async fn write_chunk(
        &self,
        pkg: &Arc<Package>,
        chunk: u32,
        data: Bytes,
    ) -> Result<bool, StoreError> {
        let deadline = tokio::time::Instant::now() + CLAIM_WAIT;
        let mut w = loop {
            let released = pkg.claim_released.notified();
            if let Some(w) = self.begin_chunk(pkg, chunk).await? {
                break w;
            }
            if pkg.has_chunk(chunk) {
                return Ok(false);
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return Err(StoreError::Internal(format!(
                    "chunk {chunk} stayed claimed by another request for {CLAIM_WAIT:?}"
                )));
            }
        };
        if data.len() != w.remaining() as usize {
            return Err(StoreError::Internal(format!(
                "chunk {chunk} is {} bytes, expected {}",
                data.len(),
                w.remaining()
            )));
        }
        w.write(data).await?;
        match self.finish_chunk(w).await? {
            ChunkOutcome::Stored => Ok(true),
            ChunkOutcome::Mismatch => Err(StoreError::ContentMismatch(format!(
                "chunk {chunk} does not match its hash"
            ))),
        }
    }

    /// Marks a verified chunk held and tells watchers. The bitfield is
    /// saved now if that is due (see [`pacing`]), otherwise by a later
    /// [`Store::save_due`]; [`Store::sync_state`] makes saves durable.
    fn record_chunk(&self, pkg: &Package, chunk: u32) -> Result<bool, StoreError> {
        {
            let mut have = pkg.lock_have();
            if !have.set(chunk) {
                return Ok(false);
            }
            let now = std::time::Instant::now();
            let mut unsaved = pkg.lock_unsaved();
            let len = pkg
                .manifest
                .chunks
                .get(chunk as usize)
                .map_or(0, |c| c.length);
            unsaved.add(u64::from(len), now);
            if have.is_complete() || unsaved.due(now) {
                // Under the lock, so saves land in the order bits were set.
                self.db.put_have(&pkg.id, have.as_bytes())?;
                unsaved.saved(now);
            }
        }
        let _ = pkg.have_tx.send(chunk);
        Ok(true)
    }

    /// Re-hashes the chunks `pkg` held as claimed at start-up and drops
    /// those that fail from its bitfield (they will be fetched again).
    /// Returns the dropped chunks. The package stays unverified (and
    /// cannot complete) until this returns; it stops early, keeping the
    /// rest claimed for next time, when `cancel` fires.
    pub async fn verify_restored(
        &self,
        pkg: &Arc<Package>,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<Vec<u32>, StoreError> {
        let claimed = pkg
            .unverified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        let started = std::time::Instant::now();
        let (p, stop) = (pkg.clone(), cancel.clone());
        let (bad, left) = blocking(move || {
            let mut bad = Vec::new();
            for (k, &i) in claimed.iter().enumerate() {
                if stop.is_cancelled() {
                    return Ok((bad, claimed[k..].to_vec()));
                }
                // Buffered: this runs once, at start-up.
                let (regions, len, hash) = chunk_io::regions(&p, i, false)?;
                let mut data = Vec::with_capacity(len as usize);
                let read = regions.iter().try_for_each(|r| {
                    data.extend_from_slice(&files::read_chunk(&r.path, r.offset, r.len)?);
                    Ok::<_, std::io::Error>(())
                });
                if read.is_err() || blake3::hash(&data) != hash {
                    bad.push(i);
                } else {
                    p.checksums.set(i, checksums::Crc::of(&data));
                }
            }
            Ok((bad, Vec::new()))
        })
        .await?;
        if !bad.is_empty() {
            tracing::warn!(package = %pkg.name_version(), chunks = bad.len(), "chunks recorded as held failed re-verification; they will be fetched again");
            let mut have = pkg.lock_have();
            for &i in &bad {
                have.clear(i);
            }
            self.db.put_have(&pkg.id, have.as_bytes())?;
        }
        *pkg.unverified.lock().unwrap_or_else(|p| p.into_inner()) = left;
        tracing::debug!(package = %pkg.name_version(), secs = started.elapsed().as_secs_f64(), dropped = bad.len(), "re-verified restored chunks");
        Ok(bad)
    }

    /// Saves the bitfields due to be saved (see [`pacing`]). The agent
    /// calls this every [`HAVE_SAVE_INTERVAL`], then [`Store::sync_state`].
    pub fn save_due(&self) -> Result<(), StoreError> {
        self.save_where(|u, now| u.due(now))
    }

    /// Saves every bitfield with unsaved chunks, due or not (at shutdown).
    pub fn save_dirty(&self) -> Result<(), StoreError> {
        self.save_where(|u, _| u.is_dirty())
    }

    fn save_where(
        &self,
        save: impl Fn(&pacing::Unsaved, std::time::Instant) -> bool,
    ) -> Result<(), StoreError> {
        for pkg in self.list() {
            let now = std::time::Instant::now();
            if !save(&pkg.lock_unsaved(), now) {
                continue;
            }
            // The bitfield's lock first, as in `record_chunk`.
            let have = pkg.lock_have();
            let mut unsaved = pkg.lock_unsaved();
            self.db.put_have(&pkg.id, have.as_bytes())?;
            unsaved.saved(now);
        }
        Ok(())
    }

    /// A held chunk no longer matches its hash: drop it from the bitfield
    /// (it will be fetched again) and pause a package that was complete.
    fn drop_corrupt(&self, pkg: &Package, chunk: u32) -> StoreError {
        tracing::error!(package = %pkg.name_version(), chunk, "stored chunk fails its hash; dropping it");
        pkg.checksums.clear(chunk);
        let saved = {
            let mut have = pkg.lock_have();
            have.clear(chunk);
            self.db.put_have(&pkg.id, have.as_bytes())
        };
        if pkg.record().state == PackageState::Complete {
            let _ = self.save_record(pkg, |r| r.state = PackageState::Paused);
        }
        match saved {
            Ok(()) => StoreError::Corrupt { chunk },
            Err(e) => e,
        }
    }

    /// Finishes a download: fsync, read-only modes, symlinks, stable path.
    pub async fn complete(&self, pkg: &Arc<Package>) -> Result<PathBuf, StoreError> {
        if !pkg.lock_have().is_complete() || pkg.has_unverified() {
            return Err(StoreError::Internal(
                "complete() before every chunk is held and verified".into(),
            ));
        }
        let root = pkg.root.clone();
        let manifest = pkg.manifest.clone();
        let link = self.stable_path(&pkg.manifest);
        let l = link.clone();
        blocking(move || {
            files::finalize(&root, &manifest).map_err(io_err(&root))?;
            files::set_stable_link(&root, &l).map_err(io_err(&l))
        })
        .await?;
        self.save_record(pkg, |r| {
            r.state = PackageState::Complete;
            r.error.clear();
            r.last_used_ms = now_ms();
        })?;
        self.db.flush().await?;
        Ok(link)
    }

    pub fn set_state(
        &self,
        pkg: &Package,
        state: PackageState,
        error: &str,
    ) -> Result<(), StoreError> {
        self.save_record(pkg, |r| {
            r.state = state;
            r.error = error.to_owned();
        })
        .map(|_| ())
    }

    pub fn set_pinned(&self, pkg: &Package, pinned: bool) -> Result<(), StoreError> {
        self.save_record(pkg, |r| r.pinned = pinned).map(|_| ())
    }

    /// Marks a package as used now (LRU). Serving calls this for every
    /// request, and eviction needs only a coarse order: the record is
    /// written again only when its time is [`TOUCH_GRANULARITY_MS`] old.
    pub fn touch(&self, pkg: &Package) {
        let now = now_ms();
        let stale = {
            let r = pkg.record.lock().unwrap_or_else(|p| p.into_inner());
            now.saturating_sub(r.last_used_ms) >= TOUCH_GRANULARITY_MS
        };
        if stale {
            let _ = self.save_record(pkg, |r| r.last_used_ms = now);
        }
    }

    /// Forgets a package and deletes its content (never content seeded in
    /// place, which belongs to the publisher).
    pub async fn remove(&self, id: &ContentId) -> Result<(), StoreError> {
        let Some(pkg) = self
            .packages
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
        else {
            return Ok(());
        };
        self.db.remove(id, &pkg.name_version())?;
        if pkg.record().external_root.is_none() {
            let root = pkg.root.clone();
            let link = self.stable_path(&pkg.manifest);
            blocking(move || {
                if std::fs::read_link(&link).is_ok_and(|t| t == root) {
                    let _ = std::fs::remove_file(&link);
                }
                files::remove_tree(&root).map_err(io_err(&root))
            })
            .await?;
        }
        Ok(())
    }

    /// Makes what was written to the state database since the last flush
    /// durable; nothing to do (and no `fsync`) if nothing was.
    pub async fn sync_state(&self) -> Result<(), StoreError> {
        self.db.flush_if_written().await
    }

    pub async fn flush(&self) -> Result<(), StoreError> {
        self.save_dirty()?;
        self.db.flush().await
    }
}

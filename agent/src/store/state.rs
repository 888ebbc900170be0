//! Package state in sled. Each record type has its own versioned tree;
//! sled is only for metadata, chunk bytes live in files.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use shoal_proto::ContentId;

use super::StoreError;

/// Where a package stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PackageState {
    Downloading,
    Paused,
    Complete,
    Failed,
}

/// What the agent remembers about one package.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PackageRecord {
    pub name: String,
    pub version: String,
    pub state: PackageState,
    pub pinned: bool,
    pub priority: i32,
    pub total_size: u64,
    /// Milliseconds since the Unix epoch; drives LRU eviction.
    pub last_used_ms: i64,
    /// Content served in place from outside the store (published here).
    pub external_root: Option<PathBuf>,
    pub error: String,
}

/// The sled database and its trees.
#[derive(Debug, Clone)]
pub struct StateDb {
    db: sled::Db,
    /// Something was written since the last flush.
    written: std::sync::Arc<std::sync::atomic::AtomicBool>,
    packages: sled::Tree,
    manifests: sled::Tree,
    have: sled::Tree,
    names: sled::Tree,
}

fn db_err(e: sled::Error) -> StoreError {
    StoreError::Db(e.to_string())
}

impl StateDb {
    pub fn open(path: &std::path::Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            // sled's flusher fsyncs its log on every cycle, written to or
            // not: at 200 ms that was five fsyncs a second per agent, idle
            // or busy. Writes are made durable by `flush_if_written` (the
            // agent's save clock) and explicit flushes; the flusher stays
            // for sled's own log clean-up.
            .flush_every_ms(Some(5000))
            // Metadata only (records, bitfields): sled's 1 GiB default cache
            // would be most of an agent's memory for no gain.
            .cache_capacity(8 << 20)
            .open()
            .map_err(|e| StoreError::Db(format!("opening {}: {e}", path.display())))?;
        Ok(Self {
            packages: db.open_tree("packages-1").map_err(db_err)?,
            manifests: db.open_tree("manifests-1").map_err(db_err)?,
            have: db.open_tree("have-1").map_err(db_err)?,
            names: db.open_tree("names-1").map_err(db_err)?,
            db,
            written: Default::default(),
        })
    }

    pub fn put_package(
        &self,
        id: &ContentId,
        record: &PackageRecord,
        signed_manifest: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_vec(record).map_err(|e| StoreError::Db(e.to_string()))?;
        if let Some(m) = signed_manifest {
            self.manifests.insert(id.as_bytes(), m).map_err(db_err)?;
        }
        self.names
            .insert(
                format!("{}@{}", record.name, record.version),
                &id.as_bytes()[..],
            )
            .map_err(db_err)?;
        self.packages.insert(id.as_bytes(), json).map_err(db_err)?;
        self.mark_written();
        Ok(())
    }

    pub fn put_have(&self, id: &ContentId, bits: &[u8]) -> Result<(), StoreError> {
        self.have.insert(id.as_bytes(), bits).map_err(db_err)?;
        self.mark_written();
        Ok(())
    }

    pub fn remove(&self, id: &ContentId, name_version: &str) -> Result<(), StoreError> {
        self.packages.remove(id.as_bytes()).map_err(db_err)?;
        self.manifests.remove(id.as_bytes()).map_err(db_err)?;
        self.have.remove(id.as_bytes()).map_err(db_err)?;
        if self
            .names
            .get(name_version)
            .map_err(db_err)?
            .is_some_and(|v| v.as_ref() == id.as_bytes())
        {
            self.names.remove(name_version).map_err(db_err)?;
        }
        self.mark_written();
        Ok(())
    }

    /// Every stored package: record, signed manifest bytes, bitfield bytes.
    #[allow(clippy::type_complexity)]
    pub fn load_all(
        &self,
    ) -> Result<Vec<(ContentId, PackageRecord, Vec<u8>, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for item in self.packages.iter() {
            let (k, v) = item.map_err(db_err)?;
            let Some(id) = ContentId::from_slice(&k) else {
                tracing::warn!("skipping a package record with a malformed key");
                continue;
            };
            let record: PackageRecord = match serde_json::from_slice(&v) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(content_id = %id, "skipping an unreadable package record: {e}");
                    continue;
                }
            };
            let manifest = self
                .manifests
                .get(k.as_ref())
                .map_err(db_err)?
                .map(|v| v.to_vec())
                .unwrap_or_default();
            let have = self
                .have
                .get(k.as_ref())
                .map_err(db_err)?
                .map(|v| v.to_vec())
                .unwrap_or_default();
            out.push((id, record, manifest, have));
        }
        Ok(out)
    }

    /// After a write: the next [`StateDb::flush_if_written`] flushes.
    fn mark_written(&self) {
        self.written
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// [`StateDb::flush`] if anything was written since the last flush.
    pub async fn flush_if_written(&self) -> Result<(), StoreError> {
        if self.written.load(std::sync::atomic::Ordering::Acquire) {
            self.flush().await?;
        }
        Ok(())
    }

    /// Blocking `flush` on the blocking pool: sled 0.34's `flush_async`
    /// never returns when called concurrently (sled issue 1308).
    pub async fn flush(&self) -> Result<(), StoreError> {
        // Cleared before: a write during the flush marks it again (writes
        // mark after they land), so nothing is left unflushed unmarked.
        self.written
            .store(false, std::sync::atomic::Ordering::Release);
        let db = self.db.clone();
        let flushed = tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| StoreError::Internal(format!("flush task: {e}")))
            .and_then(|r| r.map_err(db_err));
        if flushed.is_err() {
            self.mark_written();
        }
        flushed.map(|_| ())
    }
}

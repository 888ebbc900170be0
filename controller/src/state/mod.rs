//! Everything the controller knows, in sled under its data directory:
//! join tokens, enrolled agents, the audit log, policies, and (in
//! [`catalog`] and [`rollouts`]) the package catalog, namespaces and
//! rollouts. Each record is JSON, so a
//! backup is readable. A change is acknowledged only after it is flushed,
//! so a `kill -9` loses nothing a caller was told had happened.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

pub mod catalog;
pub mod rollouts;

pub use catalog::{CatalogRecord, NamespaceRecord, RegisterError};
pub use rollouts::{AgentProgress, RolloutRecord};

/// Why the state database failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    #[error("state database in {dir}: {cause} (is another controller using this data directory?)")]
    Open { dir: PathBuf, cause: sled::Error },
    #[error("state database: {0}")]
    Db(#[from] sled::Error),
    #[error("state record {key} is unreadable: {cause}")]
    Corrupt {
        key: String,
        cause: serde_json::Error,
    },
    #[error("join token is unknown")]
    TokenUnknown,
    #[error("join token expired")]
    TokenExpired,
    #[error("join token has no uses left")]
    TokenUsedUp,
}

/// Every tree's records by tree name: what a backup holds.
pub type Trees = Vec<(String, Vec<(Vec<u8>, Vec<u8>)>)>;

/// A join token as stored: only the token's hash is kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    pub groups: Vec<String>,
    pub labels: Vec<(String, String)>,
    pub expires_ms: i64,
    pub uses_left: u32,
    pub created_ms: i64,
    pub created_by: String,
}

/// An enrolled agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentRecord {
    pub agent_id: String,
    pub groups: Vec<String>,
    pub labels: Vec<(String, String)>,
    pub hostname: String,
    /// Serial of the newest certificate issued to it, lowercase hex.
    pub serial: String,
    pub cert_expires_ms: i64,
    pub enrolled_ms: i64,
    pub revoked: Option<Revocation>,
    /// SHA-256 of its newest certificate, lowercase hex.
    #[serde(default)]
    pub fingerprint: String,
    /// Where its peers can reach it, as it last reported. Kept, so the
    /// roster survives a controller restart.
    #[serde(default)]
    pub addrs: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Revocation {
    pub at_ms: i64,
    pub by: String,
    pub reason: String,
}

/// One admin call: who, what, when, outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at_ms: i64,
    pub actor: String,
    pub role: String,
    pub action: String,
    pub target: String,
    pub allowed: bool,
    pub outcome: String,
}

/// The controller's state.
#[derive(Debug, Clone)]
pub struct State {
    db: sled::Db,
    /// Writers hold it shared; a backup holds it exclusively for the
    /// moment it copies the trees, so the copy is one consistent state.
    gate: std::sync::Arc<tokio::sync::RwLock<()>>,
    tokens: sled::Tree,
    agents: sled::Tree,
    audit: sled::Tree,
    policies: sled::Tree,
    meta: sled::Tree,
    catalog: sled::Tree,
    namespaces: sled::Tree,
    rollouts: sled::Tree,
    rollout_agents: sled::Tree,
    /// Serialises catalog registrations, so the name and quota checks and
    /// the insert are one step.
    catalog_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Counts writes to the agent table, so the fleet view can keep its
    /// decoded agents while the table is unchanged.
    agents_version: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// A stored policy document: its YAML as applied, what it says, and the
/// policy version that stored it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredPolicy {
    pub yaml: String,
    pub doc: crate::policy::PolicyDoc,
    pub version: u64,
}

/// Key of the fleet's policy version in the meta tree (u64, big-endian).
const POLICY_VERSION_KEY: &[u8] = b"policy_version";

fn decode<T: DeserializeOwned>(key: &[u8], v: &[u8]) -> Result<T, StateError> {
    serde_json::from_slice(v).map_err(|cause| StateError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        cause,
    })
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Our own plain structs: serialising them cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

impl State {
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(64 << 20)
            .open()
            .map_err(|cause| StateError::Open {
                dir: dir.to_owned(),
                cause,
            })?;
        Ok(Self {
            tokens: db.open_tree("tokens-1")?,
            agents: db.open_tree("agents-1")?,
            audit: db.open_tree("audit-1")?,
            policies: db.open_tree("policies-1")?,
            meta: db.open_tree("meta-1")?,
            catalog: db.open_tree("catalog-1")?,
            namespaces: db.open_tree("namespaces-1")?,
            rollouts: db.open_tree("rollouts-1")?,
            rollout_agents: db.open_tree("rollout-agents-1")?,
            catalog_lock: Default::default(),
            agents_version: Default::default(),
            db,
            gate: Default::default(),
        })
    }

    /// Every tree's contents at one instant: writers wait while it copies.
    pub async fn snapshot(&self) -> Result<Trees, StateError> {
        let _exclusive = self.gate.write().await;
        let mut out = Vec::new();
        for name in self.db.tree_names() {
            let tree = self.db.open_tree(&name)?;
            let kvs = tree
                .iter()
                .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())))
                .collect::<Result<Vec<_>, _>>()?;
            out.push((String::from_utf8_lossy(&name).into_owned(), kvs));
        }
        Ok(out)
    }

    /// Writes `trees` into a new database at `dir` (for restore).
    pub fn create_from(dir: &Path, trees: &Trees) -> Result<(), StateError> {
        let db = sled::Config::new()
            .path(dir)
            .open()
            .map_err(|cause| StateError::Open {
                dir: dir.to_owned(),
                cause,
            })?;
        for (name, kvs) in trees {
            let tree = db.open_tree(name)?;
            for (k, v) in kvs {
                tree.insert(k.as_slice(), v.as_slice())?;
            }
        }
        db.flush()?;
        Ok(())
    }

    /// Makes every change so far durable; call before acknowledging one.
    ///
    /// Blocking `flush` on the blocking pool, not sled 0.34's
    /// `flush_async`: concurrent `flush_async` calls never return (sled
    /// issue 1308; 32 enrollments at once hung the controller), while
    /// concurrent blocking flushes are safe and cheap when nothing is dirty.
    pub async fn flush(&self) -> Result<(), StateError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| StateError::Db(sled::Error::Unsupported(format!("flush task: {e}"))))??;
        Ok(())
    }

    pub async fn put_token(&self, hash: &str, rec: &TokenRecord) -> Result<(), StateError> {
        let _writing = self.gate.read().await;
        self.tokens.insert(hash, encode(rec))?;
        self.flush().await
    }

    /// Uses a token once: checks expiry and uses, atomically.
    pub async fn consume_token(&self, hash: &str, now_ms: i64) -> Result<TokenRecord, StateError> {
        let _writing = self.gate.read().await;
        loop {
            let Some(old) = self.tokens.get(hash)? else {
                return Err(StateError::TokenUnknown);
            };
            let mut rec: TokenRecord = decode(hash.as_bytes(), &old)?;
            if rec.expires_ms <= now_ms {
                return Err(StateError::TokenExpired);
            }
            if rec.uses_left == 0 {
                return Err(StateError::TokenUsedUp);
            }
            rec.uses_left -= 1;
            let swapped = self
                .tokens
                .compare_and_swap(hash, Some(old), Some(encode(&rec)))?;
            if swapped.is_ok() {
                self.flush().await?;
                return Ok(rec);
            }
        }
    }

    pub fn agent(&self, id: &str) -> Result<Option<AgentRecord>, StateError> {
        self.agents
            .get(id)?
            .map(|v| decode(id.as_bytes(), &v))
            .transpose()
    }

    /// Stores an agent under an id no one holds yet, derived from `want`:
    /// `want` itself if free, else `want-2`, `want-3`, …
    pub async fn add_agent(
        &self,
        want: &str,
        mut rec: AgentRecord,
    ) -> Result<AgentRecord, StateError> {
        let _writing = self.gate.read().await;
        for n in 1u32.. {
            let id = if n == 1 {
                want.to_owned()
            } else {
                let suffix = format!("-{n}");
                let base = &want[..want.len().min(63 - suffix.len())];
                format!("{}{suffix}", base.trim_end_matches('-'))
            };
            rec.agent_id = id.clone();
            if self
                .agents
                .compare_and_swap(&id, None as Option<&[u8]>, Some(encode(&rec)))?
                .is_ok()
            {
                self.agents_changed();
                self.flush().await?;
                return Ok(rec);
            }
        }
        unreachable!("u32 ids run out")
    }

    pub async fn put_agent(&self, rec: &AgentRecord) -> Result<(), StateError> {
        let _writing = self.gate.read().await;
        self.agents.insert(&rec.agent_id, encode(rec))?;
        self.agents_changed();
        self.flush().await
    }

    fn agents_changed(&self) {
        self.agents_version
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Changes with every write to the agent table. Read it before
    /// [`State::agents`]: a write in between then shows as a newer
    /// version next time.
    pub fn agents_version(&self) -> u64 {
        self.agents_version
            .load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn agents(&self) -> Result<Vec<AgentRecord>, StateError> {
        self.agents
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    /// Appends to the audit log, durably.
    pub async fn audit(&self, entry: &AuditEntry) -> Result<(), StateError> {
        let _writing = self.gate.read().await;
        // Time-ordered keys; the id breaks ties within a millisecond.
        let mut key = (entry.at_ms as u64).to_be_bytes().to_vec();
        key.extend_from_slice(&self.db.generate_id()?.to_be_bytes());
        self.audit.insert(key, encode(entry))?;
        self.flush().await
    }

    /// Audit entries at or after `since_ms`, oldest first, optionally of
    /// one actor, at most `limit`.
    pub fn query_audit(
        &self,
        since_ms: i64,
        actor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StateError> {
        let start = (since_ms.max(0) as u64).to_be_bytes();
        let mut out = Vec::new();
        for kv in self.audit.range(start..) {
            let (k, v) = kv?;
            let e: AuditEntry = decode(&k, &v)?;
            if actor.is_none_or(|a| a == e.actor) {
                out.push(e);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The fleet's policy version: bumped by every apply, 0 before any.
    pub fn policy_version(&self) -> Result<u64, StateError> {
        Ok(self
            .meta
            .get(POLICY_VERSION_KEY)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// Stores `docs` (replacing documents of the same name) under a new
    /// policy version, all at once and durably; returns the version.
    pub async fn apply_policies(
        &self,
        docs: &[(String, crate::policy::PolicyDoc)],
    ) -> Result<u64, StateError> {
        let _writing = self.gate.read().await;
        // A transaction blocks (and under contention spins): keep it off
        // the async workers, or it stalls every session.
        let (policies, meta, docs) = (self.policies.clone(), self.meta.clone(), docs.to_vec());
        let version = tokio::task::spawn_blocking(move || {
            use sled::Transactional;
            (&policies, &meta).transaction(|(policies, meta)| {
                let version = meta
                    .get(POLICY_VERSION_KEY)?
                    .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
                    .map_or(0, u64::from_be_bytes)
                    + 1;
                for (yaml, doc) in &docs {
                    let rec = StoredPolicy {
                        yaml: yaml.clone(),
                        doc: doc.clone(),
                        version,
                    };
                    policies.insert(doc.name.as_bytes(), encode(&rec))?;
                }
                meta.insert(POLICY_VERSION_KEY, &version.to_be_bytes())?;
                Ok(version)
            })
        })
        .await
        .map_err(|e| StateError::Db(sled::Error::Unsupported(format!("policy task: {e}"))))?
        .map_err(|e: sled::transaction::TransactionError<()>| match e {
            sled::transaction::TransactionError::Storage(e) => StateError::Db(e),
            sled::transaction::TransactionError::Abort(()) => StateError::Db(
                sled::Error::Unsupported("policy transaction aborted".into()),
            ),
        })?;
        self.flush().await?;
        Ok(version)
    }

    /// Every stored policy document, by name.
    pub fn policies(&self) -> Result<Vec<StoredPolicy>, StateError> {
        self.policies
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    pub fn policy(&self, name: &str) -> Result<Option<StoredPolicy>, StateError> {
        self.policies
            .get(name)?
            .map(|v| decode(name.as_bytes(), &v))
            .transpose()
    }
}

//! The package catalog (`catalog-1`, by content id) and the namespaces
//! packages are published into (`namespaces-1`, by name).
//!
//! A package belongs to the namespace before the `/` of its name. A
//! namespace says which publisher identities may register into it, which
//! signing keys it accepts and how many bytes it may hold. Registration
//! checks the name, immutability and the quota under one lock, so two
//! publishers racing for the last bytes cannot both win.

use serde::{Deserialize, Serialize};

use super::{State, StateError, decode, encode};

/// A package in the catalog.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CatalogRecord {
    pub name: String,
    pub version: String,
    /// Lowercase hex.
    pub content_id: String,
    pub total_size: u64,
    pub labels: Vec<(String, String)>,
    /// Groups that may fetch it; empty = every agent.
    pub allowed_groups: Vec<String>,
    pub publisher_key_id: String,
    pub registered_ms: i64,
    pub registered_by: String,
    /// The signed manifest as the publisher sent it (its wire encoding).
    pub signed: Vec<u8>,
    pub withdrawn: Option<Withdrawal>,
}

impl CatalogRecord {
    pub fn name_version(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Withdrawal {
    pub at_ms: i64,
    pub by: String,
}

/// Who may publish into a namespace, with which keys, and how much.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NamespaceRecord {
    pub name: String,
    /// Identities with the publisher role that may register here.
    pub publishers: Vec<String>,
    /// Accepted signing keys, `ed25519:<hex>`.
    pub keys: Vec<String>,
    /// 0 = unlimited.
    pub quota_bytes: u64,
}

/// Why a registration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    #[error(
        "{name_version} is already registered with another content id ({existing}); \
         packages are immutable: publish a new version"
    )]
    Immutable {
        name_version: String,
        existing: String,
    },
    #[error(
        "namespace {namespace} would hold {would_be} bytes, over its quota of {quota} bytes \
         ({used} used); withdraw old versions or ask an admin to raise the quota"
    )]
    OverQuota {
        namespace: String,
        used: u64,
        would_be: u64,
        quota: u64,
    },
    #[error(transparent)]
    State(#[from] StateError),
}

/// The namespace of a package name: what comes before its `/`.
pub fn namespace_of(name: &str) -> Option<&str> {
    name.split_once('/').map(|(ns, _)| ns)
}

impl State {
    pub async fn put_namespace(&self, ns: &NamespaceRecord) -> Result<(), StateError> {
        let _writing = self.gate.read().await;
        self.namespaces.insert(ns.name.as_bytes(), encode(ns))?;
        self.flush().await
    }

    pub fn namespace(&self, name: &str) -> Result<Option<NamespaceRecord>, StateError> {
        self.namespaces
            .get(name)?
            .map(|v| decode(name.as_bytes(), &v))
            .transpose()
    }

    pub fn namespaces(&self) -> Result<Vec<NamespaceRecord>, StateError> {
        self.namespaces
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    /// Every catalog entry, withdrawn ones included.
    pub fn catalog(&self) -> Result<Vec<CatalogRecord>, StateError> {
        self.catalog
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    /// The entry for a content id (hex) or `name@version`.
    pub fn catalog_entry(&self, reference: &str) -> Result<Option<CatalogRecord>, StateError> {
        if let Some(v) = self.catalog.get(reference)? {
            return decode(reference.as_bytes(), &v).map(Some);
        }
        Ok(self
            .catalog()?
            .into_iter()
            .find(|r| r.name_version() == reference))
    }

    /// Bytes held by `namespace`'s registered, not withdrawn packages.
    pub fn namespace_used(&self, namespace: &str) -> Result<u64, StateError> {
        Ok(self
            .catalog()?
            .iter()
            .filter(|r| r.withdrawn.is_none() && namespace_of(&r.name) == Some(namespace))
            .map(|r| r.total_size)
            .sum())
    }

    /// Adds `rec` to the catalog: the same content again is a no-op (its
    /// group list is replaced); the same name@version with other content,
    /// or a namespace over its quota, is refused.
    pub async fn register(
        &self,
        rec: &CatalogRecord,
        quota_bytes: u64,
    ) -> Result<(), RegisterError> {
        let _one_at_a_time = self.catalog_lock.lock().await;
        let entries = self.catalog()?;
        let nv = rec.name_version();
        if let Some(old) = entries.iter().find(|r| r.name_version() == nv)
            && old.content_id != rec.content_id
        {
            return Err(RegisterError::Immutable {
                name_version: nv,
                existing: old.content_id.clone(),
            });
        }
        let ns = namespace_of(&rec.name).unwrap_or_default();
        let used: u64 = entries
            .iter()
            .filter(|r| {
                r.withdrawn.is_none()
                    && namespace_of(&r.name) == Some(ns)
                    && r.content_id != rec.content_id
            })
            .map(|r| r.total_size)
            .sum();
        let would_be = used.saturating_add(rec.total_size);
        if quota_bytes > 0 && would_be > quota_bytes {
            return Err(RegisterError::OverQuota {
                namespace: ns.to_owned(),
                used,
                would_be,
                quota: quota_bytes,
            });
        }
        let _writing = self.gate.read().await;
        self.catalog
            .insert(rec.content_id.as_bytes(), encode(rec))
            .map_err(StateError::from)?;
        self.flush().await?;
        Ok(())
    }

    /// Marks a package withdrawn; returns the updated entry, `None` if it
    /// is not in the catalog.
    pub async fn withdraw(
        &self,
        reference: &str,
        by: &str,
        now_ms: i64,
    ) -> Result<Option<CatalogRecord>, StateError> {
        let _one_at_a_time = self.catalog_lock.lock().await;
        let Some(mut rec) = self.catalog_entry(reference)? else {
            return Ok(None);
        };
        if rec.withdrawn.is_none() {
            rec.withdrawn = Some(Withdrawal {
                at_ms: now_ms,
                by: by.to_owned(),
            });
            let _writing = self.gate.read().await;
            self.catalog
                .insert(rec.content_id.as_bytes(), encode(&rec))?;
            self.flush().await?;
        }
        Ok(Some(rec))
    }
}

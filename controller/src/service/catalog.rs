//! The catalog calls: registering a signed manifest into a namespace
//! (signature, namespace ACL and byte quota checked), withdrawing it,
//! searching, managing namespaces, and handing manifests to agents
//! (only to agents of the package's groups when it is restricted).

use shoal_proto::identity::{Identity, validate_label};
use shoal_proto::signing::{PublicKey, TrustedKeys};
use shoal_proto::{ContentId, SignedManifest, pb};
use tonic::Status;

use super::{Shared, internal};
use crate::auth::Caller;
use crate::state::catalog::namespace_of;
use crate::state::{CatalogRecord, NamespaceRecord, RegisterError};

pub fn entry(r: &CatalogRecord) -> pb::CatalogEntry {
    pb::CatalogEntry {
        name: r.name.clone(),
        version: r.version.clone(),
        content_id: hex::decode(&r.content_id).unwrap_or_default().into(),
        total_size: r.total_size,
        labels: shoal_proto::labels::to_pb(&r.labels),
        allowed_groups: r.allowed_groups.clone(),
        publisher_key_id: r.publisher_key_id.clone(),
        registered_unix_ms: r.registered_ms,
        withdrawn: r.withdrawn.is_some(),
    }
}

/// The namespace `name` belongs to, and whether `caller` may publish there.
fn namespace_for(shared: &Shared, caller: &Caller, name: &str) -> Result<NamespaceRecord, Status> {
    let ns = namespace_of(name).ok_or_else(|| {
        Status::invalid_argument(format!(
            "{name:?} has no namespace; catalog packages are named <namespace>/<name>"
        ))
    })?;
    let rec = shared
        .state
        .namespace(ns)
        .map_err(internal)?
        .ok_or_else(|| {
            Status::failed_precondition(format!(
                "namespace {ns:?} does not exist; an admin creates it with \
             `shoal-controller namespace set {ns} --key ed25519:…`"
            ))
        })?;
    if !caller.is_admin() && !rec.publishers.iter().any(|p| p == caller.name()) {
        return Err(Status::permission_denied(format!(
            "{} may not publish into namespace {ns}",
            caller.name()
        )));
    }
    Ok(rec)
}

pub async fn register(
    shared: &Shared,
    caller: &Caller,
    r: pb::RegisterPackageRequest,
) -> Result<pb::RegisterPackageResponse, Status> {
    let signed = SignedManifest::from(
        r.manifest
            .ok_or_else(|| Status::invalid_argument("a signed manifest is required"))?,
    );
    let unverified = signed
        .manifest_unverified()
        .map_err(|e| Status::invalid_argument(format!("manifest: {e}")))?;
    let ns = namespace_for(shared, caller, &unverified.name)?;
    let keys: TrustedKeys = ns
        .keys
        .iter()
        .filter_map(|k| k.parse::<PublicKey>().ok())
        .collect();
    let verified = signed.verify(&keys).map_err(|e| {
        Status::invalid_argument(format!(
            "{}: {e}; namespace {} accepts keys {}",
            unverified.name_version(),
            ns.name,
            if ns.keys.is_empty() {
                "(none yet)".to_owned()
            } else {
                ns.keys.join(", ")
            }
        ))
    })?;
    for g in &r.allowed_groups {
        validate_label("group", g).map_err(|e| Status::invalid_argument(e.to_string()))?;
    }
    let m = &verified.manifest;
    let rec = CatalogRecord {
        name: m.name.clone(),
        version: m.version.clone(),
        content_id: verified.content_id.to_string(),
        total_size: m.total_size,
        labels: m
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        allowed_groups: r.allowed_groups,
        publisher_key_id: m.publisher_key_id.clone(),
        registered_ms: crate::now_ms(),
        registered_by: caller.name().to_owned(),
        signed: signed.encode(),
        withdrawn: None,
    };
    shared
        .state
        .register(&rec, ns.quota_bytes)
        .await
        .map_err(|e| match e {
            RegisterError::Immutable { .. } => Status::already_exists(e.to_string()),
            RegisterError::OverQuota { .. } => Status::resource_exhausted(e.to_string()),
            RegisterError::State(e) => internal(e),
        })?;
    shared.fleet.bump();
    tracing::info!(package = %rec.name_version(), by = %caller.name(), groups = ?rec.allowed_groups, "package registered");
    Ok(pb::RegisterPackageResponse {
        content_id: verified.content_id.as_bytes().to_vec().into(),
    })
}

pub async fn withdraw(
    shared: &Shared,
    caller: &Caller,
    reference: &str,
) -> Result<pb::WithdrawPackageResponse, Status> {
    let rec = shared
        .state
        .catalog_entry(reference)
        .map_err(internal)?
        .ok_or_else(|| Status::not_found(format!("{reference} is not in the catalog")))?;
    namespace_for(shared, caller, &rec.name)?;
    shared
        .state
        .withdraw(&rec.content_id, caller.name(), crate::now_ms())
        .await
        .map_err(internal)?;
    shared.fleet.bump();
    tracing::info!(package = %rec.name_version(), by = %caller.name(), "package withdrawn");
    Ok(pb::WithdrawPackageResponse {})
}

/// Entries whose name@version contains `text` (any case) and that carry
/// every label asked for; newest registration first.
pub fn search(
    shared: &Shared,
    r: &pb::SearchCatalogRequest,
) -> Result<Vec<pb::CatalogEntry>, Status> {
    search_where(shared, r, |_| true)
}

/// The catalog as `agent` may see it: nothing withdrawn, nothing
/// restricted to groups it is not in.
pub fn search_for_agent(
    shared: &Shared,
    agent: &Identity,
    r: &pb::SearchCatalogRequest,
) -> Result<Vec<pb::CatalogEntry>, Status> {
    search_where(shared, r, |e| {
        e.withdrawn.is_none()
            && (e.allowed_groups.is_empty() || e.allowed_groups.iter().any(|g| agent.in_group(g)))
    })
}

fn search_where(
    shared: &Shared,
    r: &pb::SearchCatalogRequest,
    visible: impl Fn(&CatalogRecord) -> bool,
) -> Result<Vec<pb::CatalogEntry>, Status> {
    let text = r.text.to_lowercase();
    let limit = if r.limit == 0 {
        1000
    } else {
        r.limit.min(10_000)
    } as usize;
    let mut hits: Vec<CatalogRecord> = shared
        .state
        .catalog()
        .map_err(internal)?
        .into_iter()
        .filter(|e| visible(e))
        .filter(|e| e.name_version().to_lowercase().contains(&text))
        .filter(|e| {
            r.labels
                .iter()
                .all(|l| e.labels.iter().any(|(k, v)| *k == l.key && *v == l.value))
        })
        .collect();
    hits.sort_by(|a, b| {
        b.registered_ms
            .cmp(&a.registered_ms)
            .then(a.name.cmp(&b.name))
    });
    Ok(hits.iter().take(limit).map(entry).collect())
}

pub async fn set_namespace(shared: &Shared, ns: pb::Namespace) -> Result<(), Status> {
    validate_label("namespace", &ns.name).map_err(|e| Status::invalid_argument(e.to_string()))?;
    for k in &ns.keys {
        k.parse::<PublicKey>()
            .map_err(|e| Status::invalid_argument(format!("key {k:?}: {e}")))?;
    }
    let rec = NamespaceRecord {
        name: ns.name,
        publishers: ns.publishers,
        keys: ns.keys,
        quota_bytes: ns.quota_bytes,
    };
    shared.state.put_namespace(&rec).await.map_err(internal)?;
    tracing::info!(namespace = %rec.name, publishers = ?rec.publishers, quota = rec.quota_bytes, "namespace set");
    Ok(())
}

pub fn list_namespaces(shared: &Shared) -> Result<Vec<pb::Namespace>, Status> {
    let state = &shared.state;
    state
        .namespaces()
        .map_err(internal)?
        .into_iter()
        .map(|n| {
            Ok(pb::Namespace {
                used_bytes: state.namespace_used(&n.name).map_err(internal)?,
                name: n.name,
                publishers: n.publishers,
                keys: n.keys,
                quota_bytes: n.quota_bytes,
            })
        })
        .collect()
}

/// A manifest for an agent: by name@version or content id, not withdrawn,
/// and restricted packages only to agents of their groups.
pub fn manifest_for(
    shared: &Shared,
    agent: &Identity,
    req: pb::GetManifestRequest,
) -> Result<pb::GetManifestResponse, Status> {
    let reference = match req.package.and_then(|p| p.r#ref) {
        Some(pb::package_ref::Ref::NameVersion(nv)) => nv,
        Some(pb::package_ref::Ref::ContentId(id)) => ContentId::from_slice(&id)
            .ok_or_else(|| Status::invalid_argument("content_id must be 32 bytes"))?
            .to_string(),
        None => return Err(Status::invalid_argument("package reference is required")),
    };
    let rec = shared
        .state
        .catalog_entry(&reference)
        .map_err(internal)?
        .filter(|r| r.withdrawn.is_none())
        .ok_or_else(|| Status::not_found(format!("{reference} is not in the catalog")))?;
    if !rec.allowed_groups.is_empty() && !rec.allowed_groups.iter().any(|g| agent.in_group(g)) {
        tracing::warn!(agent = %agent.agent_id, package = %rec.name_version(), "manifest refused: not in the package's groups");
        return Err(Status::permission_denied(format!(
            "{} is restricted to groups {}; agent {} is in none of them",
            rec.name_version(),
            rec.allowed_groups.join(", "),
            agent.agent_id
        )));
    }
    let signed = SignedManifest::decode(&rec.signed)
        .map_err(|e| Status::internal(format!("stored manifest of {}: {e}", rec.name_version())))?;
    Ok(pb::GetManifestResponse {
        content_id: signed.content_id().as_bytes().to_vec().into(),
        manifest: Some(signed.to_pb()),
        allowed_groups: rec.allowed_groups,
    })
}

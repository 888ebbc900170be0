//! Acting on the controller's assignments and withdrawals.
//!
//! An assignment names a package by content id: one this agent holds is
//! pinned if asked and resumed if paused; a new one's manifest comes from
//! the controller's catalog (which refuses agents outside a restricted
//! package's groups), is verified against this agent's trusted publishers
//! like any other, and is queued; the chunks come from the swarm. An
//! assignment that cannot start is remembered and reported as a failed
//! package until it starts, so the rollout shows why.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_proto::pb::agent_control_client::AgentControlClient;
use shoal_proto::pb::package_status::State as PkgState;
use shoal_proto::{ContentId, SignedManifest, pb};

use crate::store::{PackageState, Store};
use crate::swarm::SwarmContext;
use crate::transfers::Transfers;

/// Asking the controller for one manifest gives up after this.
const MANIFEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Assignments that could not start, by content id.
#[derive(Debug, Default)]
pub struct AssignmentErrors(Mutex<HashMap<ContentId, pb::PackageStatus>>);

impl AssignmentErrors {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ContentId, pb::PackageStatus>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, a: &pb::Assignment, id: ContentId, error: String) {
        tracing::warn!(package = %format!("{}@{}", a.name, a.version), "assignment cannot start: {error}");
        self.lock().insert(
            id,
            pb::PackageStatus {
                content_id: a.content_id.clone(),
                name: a.name.clone(),
                version: a.version.clone(),
                state: PkgState::Failed as i32,
                error,
                ..Default::default()
            },
        );
    }

    /// The failures to report: those of packages the store does not hold.
    pub fn reported(&self, store: &Store) -> Vec<pb::PackageStatus> {
        let mut errors = self.lock();
        errors.retain(|id, _| store.get(id).is_none());
        errors.values().cloned().collect()
    }
}

/// Starts every assignment not under way yet.
pub async fn apply(
    ctx: &Arc<SwarmContext>,
    transfers: &Transfers,
    manifests: &AgentControlClient<tonic::transport::Channel>,
    errors: &AssignmentErrors,
    assignments: &pb::Assignments,
) {
    for a in &assignments.assignments {
        let Some(id) = ContentId::from_slice(&a.content_id) else {
            tracing::warn!("assignment with a malformed content id ignored");
            continue;
        };
        if ctx.access.is_withdrawn(&id) {
            continue;
        }
        if let Err(e) = start(ctx, transfers, manifests, a, id).await {
            errors.set(a, id, e);
        }
    }
}

async fn start(
    ctx: &Arc<SwarmContext>,
    transfers: &Transfers,
    manifests: &AgentControlClient<tonic::transport::Channel>,
    a: &pb::Assignment,
    id: ContentId,
) -> Result<(), String> {
    if let Some(pkg) = ctx.store.get(&id) {
        if a.pin && !pkg.record().pinned {
            ctx.store
                .set_pinned(&pkg, true)
                .map_err(|e| e.to_string())?;
        }
        if pkg.record().state == PackageState::Paused {
            transfers.resume(id).await?;
        }
        return Ok(());
    }
    let mut client = manifests.clone();
    let req = pb::GetManifestRequest {
        package: Some(pb::PackageRef {
            r#ref: Some(pb::package_ref::Ref::ContentId(a.content_id.clone())),
        }),
    };
    let resp = tokio::time::timeout(MANIFEST_TIMEOUT, client.get_manifest(req))
        .await
        .map_err(|_| "the controller did not send the manifest in time".to_owned())?
        .map_err(|s| format!("the controller refused the manifest: {}", s.message()))?
        .into_inner();
    let signed = SignedManifest::from(resp.manifest.ok_or("the controller sent no manifest")?);
    let verified = signed
        .verify(&ctx.trusted())
        .map_err(|e| format!("manifest not installed: {e}"))?;
    if verified.content_id != id {
        return Err(format!(
            "the controller sent the manifest of {} for {id}",
            verified.content_id
        ));
    }
    ctx.access.restrict(id, resp.allowed_groups);
    let priority = a.priority;
    let pkg = ctx
        .store
        .add_download(&verified, priority, a.pin)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(package = %pkg.name_version(), "assigned by the controller; fetching");
    transfers.enqueue(pkg, priority).await;
    Ok(())
}

/// Stops serving a withdrawn package (the swarm service refuses it from
/// now on) and removes it unless it is pinned.
pub async fn withdraw(ctx: &Arc<SwarmContext>, transfers: &Transfers, id: &ContentId) {
    let Some(pkg) = ctx.store.get(id) else {
        return;
    };
    let name = pkg.name_version();
    let r = pkg.record();
    if r.pinned {
        tracing::info!(package = %name, "withdrawn by the controller; kept because it is pinned, no longer served");
        return;
    }
    let removed = if r.state == PackageState::Complete {
        ctx.store.remove(id).await.map_err(|e| e.to_string())
    } else {
        transfers.cancel(*id).await
    };
    match removed {
        Ok(()) => tracing::info!(package = %name, "withdrawn by the controller; removed"),
        Err(e) => {
            tracing::warn!(package = %name, "withdrawn by the controller; removing failed: {e}")
        }
    }
}

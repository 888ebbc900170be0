//! Finding a package's manifest among peers and verifying it.

use std::sync::Arc;
use std::time::Duration;

use shoal_proto::signing::VerifiedManifest;
use shoal_proto::{ContentId, SignedManifest, pb};
use tokio::task::JoinSet;

use super::SwarmContext;

/// One peer's manifest answer may take this long.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// Why no usable manifest was found.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    #[error("{0:?} is not name@version or a 64-hex-digit content id")]
    BadReference(String),
    #[error("this agent trusts no publisher keys; add `trusted_publishers` to its config")]
    NoTrustedPublishers,
    #[error("no peer is known yet; check discovery (mDNS, static peers) with `shoal peers`")]
    NoPeers,
    #[error("the controller refused {reference}: {reason}")]
    Refused { reference: String, reason: String },
    #[error("no peer offers {reference} (asked {asked}: {details})")]
    NotFound {
        reference: String,
        asked: usize,
        details: String,
    },
}

fn package_ref(reference: &str) -> Result<(pb::package_ref::Ref, Option<ContentId>), ResolveError> {
    if let Ok(id) = reference.parse::<ContentId>() {
        return Ok((
            pb::package_ref::Ref::ContentId(bytes::Bytes::copy_from_slice(id.as_bytes())),
            Some(id),
        ));
    }
    match reference.split_once('@') {
        Some((n, v))
            if shoal_proto::manifest::validate_name(n).is_ok()
                && shoal_proto::manifest::validate_version(v).is_ok() =>
        {
            Ok((
                pb::package_ref::Ref::NameVersion(reference.to_owned()),
                None,
            ))
        }
        _ => Err(ResolveError::BadReference(reference.to_owned())),
    }
}

/// Asks the controller's catalog first, when a session is open; else, or
/// when the catalog does not have it, every known peer at once. Returns
/// the first manifest that verifies against the trusted publishers.
pub async fn resolve_manifest(
    ctx: &Arc<SwarmContext>,
    reference: &str,
) -> Result<VerifiedManifest, ResolveError> {
    let (r, want_id) = package_ref(reference)?;
    let trusted = ctx.trusted();
    if trusted.is_empty() {
        return Err(ResolveError::NoTrustedPublishers);
    }
    if let Some(v) = from_catalog(ctx, reference, &r, want_id, &trusted).await? {
        return Ok(v);
    }
    let peers = ctx.peers.snapshot();
    if peers.is_empty() {
        return Err(ResolveError::NoPeers);
    }
    let mut asks = JoinSet::new();
    for entry in peers.values() {
        let entry = entry.clone();
        let ctx = ctx.clone();
        let r = r.clone();
        asks.spawn(async move {
            let ask = async {
                let mut conn = ctx.pool.connect(&entry).await.map_err(|e| e.to_string())?;
                if ctx.reputation.is_banned(&conn.identity.agent_id) {
                    return Err(format!("{} is banned", conn.identity.agent_id));
                }
                let resp = conn
                    .client
                    .get_manifest(pb::GetManifestRequest {
                        package: Some(pb::PackageRef { r#ref: Some(r) }),
                    })
                    .await
                    .map_err(|s| format!("{}: {}", conn.identity.agent_id, s.message()))?
                    .into_inner();
                let signed = SignedManifest::from(resp.manifest.ok_or("empty answer")?);
                Ok::<_, String>((conn.identity.agent_id, signed))
            };
            tokio::time::timeout(ASK_TIMEOUT, ask)
                .await
                .unwrap_or_else(|_| Err("timed out".into()))
        });
    }
    let asked = asks.len();
    let mut problems = Vec::new();
    while let Some(res) = asks.join_next().await {
        let (peer, signed) = match res {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                problems.push(e);
                continue;
            }
            Err(e) => {
                problems.push(e.to_string());
                continue;
            }
        };
        match signed.verify(&trusted) {
            Ok(v) if want_id.is_none_or(|id| id == v.content_id) => return Ok(v),
            Ok(_) => problems.push(format!("{peer}: answered with another content id")),
            Err(e) => {
                tracing::warn!(peer = %peer, "manifest for {reference} refused: {e}");
                problems.push(format!("{peer}: {e}"));
            }
        }
    }
    problems.sort();
    problems.dedup();
    Err(ResolveError::NotFound {
        reference: reference.to_owned(),
        asked,
        details: problems.join("; "),
    })
}

/// The manifest from the controller's catalog: `Ok(None)` when there is no
/// session or the catalog does not list it (the swarm may still have it);
/// a refusal (restricted package) is final, since peers refuse it too.
async fn from_catalog(
    ctx: &Arc<SwarmContext>,
    reference: &str,
    r: &pb::package_ref::Ref,
    want_id: Option<ContentId>,
    trusted: &shoal_proto::signing::TrustedKeys,
) -> Result<Option<VerifiedManifest>, ResolveError> {
    let Some(mut client) = ctx.controller.client() else {
        return Ok(None);
    };
    let req = pb::GetManifestRequest {
        package: Some(pb::PackageRef {
            r#ref: Some(r.clone()),
        }),
    };
    let resp = match tokio::time::timeout(ASK_TIMEOUT, client.get_manifest(req)).await {
        Ok(Ok(resp)) => resp.into_inner(),
        Ok(Err(s)) if s.code() == tonic::Code::PermissionDenied => {
            return Err(ResolveError::Refused {
                reference: reference.to_owned(),
                reason: s.message().to_owned(),
            });
        }
        Ok(Err(s)) => {
            tracing::debug!("catalog has no {reference}: {}", s.message());
            return Ok(None);
        }
        Err(_) => {
            tracing::debug!("catalog did not answer for {reference} in time");
            return Ok(None);
        }
    };
    let Some(m) = resp.manifest else {
        return Ok(None);
    };
    match SignedManifest::from(m).verify(trusted) {
        Ok(v) if want_id.is_none_or(|id| id == v.content_id) => {
            ctx.access.restrict(v.content_id, resp.allowed_groups);
            Ok(Some(v))
        }
        Ok(_) => {
            tracing::warn!("the catalog answered {reference} with another content id");
            Ok(None)
        }
        Err(e) => {
            tracing::warn!("catalog manifest for {reference} refused: {e}");
            Ok(None)
        }
    }
}

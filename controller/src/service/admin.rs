//! `Admin`: what operators call. Every call is authorised by role and
//! audited (see [`crate::auth`]).

use std::pin::Pin;
use std::time::Duration;

use shoal_proto::pb;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{SharedRef, internal};
use crate::auth::{Action, audited};
use crate::fleet::Online;
use crate::state::{AgentRecord, Revocation};
use crate::tokens::{self, TokenError, TokenSpec};

/// Serves operators.
#[derive(Debug, Clone)]
pub struct AdminService {
    shared: SharedRef,
}

impl AdminService {
    pub fn new(shared: SharedRef) -> Self {
        Self { shared }
    }

    pub fn into_server(self) -> pb::admin_server::AdminServer<Self> {
        pb::admin_server::AdminServer::new(self)
    }
}

fn agent_info(a: AgentRecord, online: Option<Online>) -> pb::AgentInfo {
    pb::AgentInfo {
        labels: shoal_proto::labels::to_pb(&a.labels),
        agent_id: a.agent_id,
        groups: a.groups,
        online: online.is_some(),
        last_seen_unix_ms: online.as_ref().map_or(0, |o| o.last_seen_ms),
        policy_version: online.as_ref().map_or(0, |o| o.policy_version),
        certificate_serial: a.serial,
        certificate_expires_unix_ms: a.cert_expires_ms,
        revoked: a.revoked.is_some(),
        hostname: a.hostname,
    }
}

/// Backup bytes per streamed message.
const BACKUP_CHUNK: usize = 1 << 20;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let r = req.get_ref().clone();
        let target = format!("groups={}", r.groups.join(","));
        let state = &self.shared.state;
        audited(
            &self.shared,
            &req,
            Action::CreateToken,
            target,
            |caller| async move {
                let spec = TokenSpec {
                    groups: r.groups,
                    labels: r.labels.into_iter().map(|l| (l.key, l.value)).collect(),
                    ttl: Duration::from_secs(r.ttl_seconds),
                    uses: r.uses,
                };
                let (token, expires) = tokens::create(state, &spec, caller.name(), crate::now_ms())
                    .await
                    .map_err(|e| match e {
                        TokenError::Invalid(m) => Status::invalid_argument(m),
                        other => Status::internal(other.to_string()),
                    })?;
                Ok(Response::new(pb::CreateTokenResponse {
                    token,
                    expires_unix_ms: expires,
                }))
            },
        )
        .await
    }

    async fn list_agents(
        &self,
        req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let group = req.get_ref().group.clone();
        let (state, fleet) = (&self.shared.state, &self.shared.fleet);
        audited(
            &self.shared,
            &req,
            Action::ListAgents,
            group.clone(),
            |_| async move {
                let agents = state
                    .agents()
                    .map_err(internal)?
                    .into_iter()
                    .filter(|a| group.is_empty() || a.groups.contains(&group))
                    .map(|a| {
                        let online = fleet.get(&a.agent_id);
                        agent_info(a, online)
                    })
                    .collect();
                Ok(Response::new(pb::ListAgentsResponse { agents }))
            },
        )
        .await
    }

    async fn revoke_agent(
        &self,
        req: Request<pb::RevokeAgentRequest>,
    ) -> Result<Response<pb::RevokeAgentResponse>, Status> {
        let r = req.get_ref().clone();
        let (state, fleet) = (&self.shared.state, &self.shared.fleet);
        audited(
            &self.shared,
            &req,
            Action::RevokeAgent,
            r.agent_id.clone(),
            |caller| async move {
                let mut rec = state.agent(&r.agent_id).map_err(internal)?.ok_or_else(|| {
                    Status::not_found(format!("no agent {:?} is enrolled", r.agent_id))
                })?;
                if rec.revoked.is_none() {
                    rec.revoked = Some(Revocation {
                        at_ms: crate::now_ms(),
                        by: caller.name().to_owned(),
                        reason: r.reason,
                    });
                    state.put_agent(&rec).await.map_err(internal)?;
                    fleet.bump();
                    self.shared.metrics.revocations.inc();
                    tracing::info!(agent = %r.agent_id, by = %caller.name(), "agent revoked");
                }
                Ok(Response::new(pb::RevokeAgentResponse {}))
            },
        )
        .await
    }

    async fn apply_policy(
        &self,
        req: Request<pb::ApplyPolicyRequest>,
    ) -> Result<Response<pb::ApplyPolicyResponse>, Status> {
        let r = req.get_ref().clone();
        let target = if r.dry_run { "dry-run" } else { "" }.to_owned();
        let shared = &self.shared;
        audited(shared, &req, Action::ApplyPolicy, target, |_| async move {
            super::policies::apply(shared, &r.yaml, r.dry_run)
                .await
                .map(Response::new)
        })
        .await
    }

    async fn get_policy(
        &self,
        req: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::GetPolicyResponse>, Status> {
        let name = req.get_ref().name.clone();
        let shared = &self.shared;
        audited(
            shared,
            &req,
            Action::GetPolicy,
            name.clone(),
            |_| async move { super::policies::get(shared, &name).map(Response::new) },
        )
        .await
    }

    async fn register_package(
        &self,
        req: Request<pb::RegisterPackageRequest>,
    ) -> Result<Response<pb::RegisterPackageResponse>, Status> {
        let r = req.get_ref().clone();
        let target = r
            .manifest
            .as_ref()
            .and_then(|m| {
                shoal_proto::SignedManifest::from(m.clone())
                    .manifest_unverified()
                    .ok()
            })
            .map(|m| m.name_version())
            .unwrap_or_else(|| "(unreadable manifest)".into());
        let shared = &self.shared;
        audited(
            shared,
            &req,
            Action::RegisterPackage,
            target,
            |caller| async move {
                super::catalog::register(shared, &caller, r)
                    .await
                    .map(Response::new)
            },
        )
        .await
    }

    async fn withdraw_package(
        &self,
        req: Request<pb::WithdrawPackageRequest>,
    ) -> Result<Response<pb::WithdrawPackageResponse>, Status> {
        let package = req.get_ref().package.clone();
        let shared = &self.shared;
        audited(
            shared,
            &req,
            Action::WithdrawPackage,
            package.clone(),
            |caller| async move {
                super::catalog::withdraw(shared, &caller, &package)
                    .await
                    .map(Response::new)
            },
        )
        .await
    }

    async fn search_catalog(
        &self,
        req: Request<pb::SearchCatalogRequest>,
    ) -> Result<Response<pb::SearchCatalogResponse>, Status> {
        let r = req.get_ref().clone();
        let shared = &self.shared;
        audited(
            shared,
            &req,
            Action::SearchCatalog,
            r.text.clone(),
            |_| async move {
                let entries = super::catalog::search(shared, &r)?;
                Ok(Response::new(pb::SearchCatalogResponse { entries }))
            },
        )
        .await
    }

    async fn set_namespace(
        &self,
        req: Request<pb::SetNamespaceRequest>,
    ) -> Result<Response<pb::SetNamespaceResponse>, Status> {
        let ns = req.get_ref().namespace.clone().unwrap_or_default();
        let shared = &self.shared;
        audited(
            shared,
            &req,
            Action::SetNamespace,
            ns.name.clone(),
            |_| async move {
                super::catalog::set_namespace(shared, ns).await?;
                Ok(Response::new(pb::SetNamespaceResponse {}))
            },
        )
        .await
    }

    async fn list_namespaces(
        &self,
        req: Request<pb::ListNamespacesRequest>,
    ) -> Result<Response<pb::ListNamespacesResponse>, Status> {
        let shared = &self.shared;
        audited(
            shared,
            &req,
            Action::ListNamespaces,
            String::new(),
            |_| async move {
                let namespaces = super::catalog::list_namespaces(shared)?;
                Ok(Response::new(pb::ListNamespacesResponse { namespaces }))
            },
        )
        .await
    }

    async fn assign(
        &self,
        req: Request<pb::AssignRequest>,
    ) -> Result<Response<pb::AssignResponse>, Status> {
        let r = req.get_ref().clone();
        let target = format!("{} to {}", r.package, r.group);
        let shared = &self.shared;
        audited(shared, &req, Action::Assign, target, |caller| async move {
            super::rollouts::assign(shared, &caller, r)
                .await
                .map(Response::new)
        })
        .await
    }

    async fn rollout_status(
        &self,
        req: Request<pb::RolloutStatusRequest>,
    ) -> Result<Response<pb::RolloutStatusResponse>, Status> {
        let r = req.get_ref().clone();
        let shared = &self.shared;
        audited(
            shared,
            &req,
            Action::RolloutStatus,
            r.package.clone(),
            |_| async move { super::rollouts::status(shared, &r).map(Response::new) },
        )
        .await
    }

    async fn query_audit(
        &self,
        req: Request<pb::QueryAuditRequest>,
    ) -> Result<Response<pb::QueryAuditResponse>, Status> {
        let r = req.get_ref().clone();
        let state = &self.shared.state;
        audited(
            &self.shared,
            &req,
            Action::QueryAudit,
            r.actor.clone(),
            |_| async move {
                let limit = if r.limit == 0 {
                    1000
                } else {
                    r.limit.min(10_000)
                } as usize;
                let actor = (!r.actor.is_empty()).then_some(r.actor.as_str());
                let records = state
                    .query_audit(r.since_unix_ms, actor, limit)
                    .map_err(internal)?
                    .into_iter()
                    .map(|e| pb::AuditRecord {
                        at_unix_ms: e.at_ms,
                        actor: e.actor,
                        role: e.role,
                        action: e.action,
                        target: e.target,
                        allowed: e.allowed,
                        outcome: e.outcome,
                    })
                    .collect();
                Ok(Response::new(pb::QueryAuditResponse { records }))
            },
        )
        .await
    }

    type BackupStream = BoxStream<pb::BackupChunk>;

    async fn backup(
        &self,
        req: Request<pb::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        let shared = &self.shared;
        let data = audited(
            shared,
            &req,
            Action::Backup,
            String::new(),
            |_| async move {
                crate::backup::create(&shared.state, &shared.config.data_dir)
                    .await
                    .map_err(|e| Status::internal(format!("backup: {e}")))
            },
        )
        .await?;
        let chunks: Vec<Result<pb::BackupChunk, Status>> = data
            .chunks(BACKUP_CHUNK)
            .map(|c| {
                Ok(pb::BackupChunk {
                    data: bytes::Bytes::copy_from_slice(c),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }
}

//! `AgentControl`: enrollment and certificate renewal. An agent enrolls
//! with a join token and a CSR (its key never leaves it) and receives a
//! certificate naming its id and the token's groups.

use std::pin::Pin;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use shoal_proto::identity::{parse_identity, validate_label};
use shoal_proto::pb;
use shoal_proto::pki::IssueRequest;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::{SharedRef, internal};
use crate::auth::Caller;
use crate::state::{AgentRecord, StateError};
use crate::tokens::token_hash;

/// Serves agents.
#[derive(Debug, Clone)]
pub struct AgentControlService {
    shared: SharedRef,
}

impl AgentControlService {
    pub fn new(shared: SharedRef) -> Self {
        Self { shared }
    }

    pub fn into_server(self) -> pb::agent_control_server::AgentControlServer<Self> {
        pb::agent_control_server::AgentControlServer::new(self)
    }

    /// Issues a certificate for `csr_pem` and records its serial and
    /// expiry on the agent.
    async fn issue(&self, mut rec: AgentRecord, csr_pem: &str) -> Result<String, Status> {
        let groups: Vec<&str> = rec.groups.iter().map(String::as_str).collect();
        let req = IssueRequest::agent(
            &rec.agent_id,
            &groups,
            self.shared.config.agent_cert_validity,
        );
        let pem = self
            .shared
            .ca
            .issue_for_csr(csr_pem, &req)
            .map_err(|e| Status::invalid_argument(format!("certificate request: {e}")))?;
        let der = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| Status::internal(e.to_string()))?;
        let id = parse_identity(&der).map_err(|e| Status::internal(e.to_string()))?;
        rec.serial = id.serial;
        rec.cert_expires_ms = id.not_after_unix * 1000;
        self.shared.state.put_agent(&rec).await.map_err(internal)?;
        Ok(pem)
    }
}

/// An agent id from a host name: lowercase, `[a-z0-9-]`, at most 63.
fn id_from_hostname(hostname: &str) -> String {
    let mut id: String = hostname
        .split('.')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(56)
        .collect();
    id = id.trim_matches('-').to_owned();
    if validate_label("agent id", &id).is_err() {
        id = "agent".into();
    }
    id
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl pb::agent_control_server::AgentControl for AgentControlService {
    async fn enroll(
        &self,
        req: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let r = req.into_inner();
        let now = crate::now_ms();
        let token = self
            .shared
            .state
            .consume_token(&token_hash(&r.token), now)
            .await
            .map_err(|e| match e {
                StateError::TokenUnknown | StateError::TokenExpired | StateError::TokenUsedUp => {
                    tracing::warn!(hostname = %r.hostname, "enrollment refused: {e}");
                    Status::permission_denied(format!("{e}; ask an admin for a new one"))
                }
                other => internal(other),
            })?;
        let mut labels = token.labels.clone();
        labels.extend(r.labels.iter().map(|l| (l.key.clone(), l.value.clone())));
        let rec = AgentRecord {
            agent_id: String::new(),
            groups: token.groups.clone(),
            labels,
            hostname: r.hostname.clone(),
            serial: String::new(),
            cert_expires_ms: 0,
            enrolled_ms: now,
            revoked: None,
        };
        let rec = self
            .shared
            .state
            .add_agent(&id_from_hostname(&r.hostname), rec)
            .await
            .map_err(internal)?;
        let certificate_pem = self.issue(rec.clone(), &r.csr_pem).await?;
        tracing::info!(agent = %rec.agent_id, groups = ?rec.groups, hostname = %r.hostname, "agent enrolled");
        Ok(Response::new(pb::EnrollResponse {
            agent_id: rec.agent_id,
            groups: rec.groups,
            certificate_pem,
            ca_certificate_pem: self.shared.ca.cert_pem().to_owned(),
        }))
    }

    async fn renew(
        &self,
        req: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        let caller = Caller::of(&req)?;
        let id = &caller.identity.agent_id;
        let rec = self
            .shared
            .state
            .agent(id)
            .map_err(internal)?
            .ok_or_else(|| Status::permission_denied(format!("agent {id} is not enrolled")))?;
        if rec.revoked.is_some() {
            return Err(Status::permission_denied(format!("agent {id} is revoked")));
        }
        let certificate_pem = self.issue(rec, &req.into_inner().csr_pem).await?;
        tracing::info!(agent = %id, "certificate renewed");
        Ok(Response::new(pb::RenewResponse { certificate_pem }))
    }

    type SessionStream = BoxStream<pb::ControllerUpdate>;

    async fn session(
        &self,
        _req: Request<Streaming<pb::AgentReport>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        Err(Status::unimplemented(
            "agent sessions are not served by this controller version yet",
        ))
    }

    async fn get_manifest(
        &self,
        _req: Request<pb::GetManifestRequest>,
    ) -> Result<Response<pb::GetManifestResponse>, Status> {
        Err(Status::unimplemented(
            "the package catalog is not served by this controller version yet",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::id_from_hostname;

    #[test]
    fn agent_ids_from_host_names() {
        assert_eq!(id_from_hostname("Lab-PC_07.example.org"), "lab-pc-07");
        assert_eq!(id_from_hostname("--"), "agent");
        assert_eq!(id_from_hostname(""), "agent");
    }
}

//! `AgentControl`: enrollment and certificate renewal. An agent enrolls
//! with a join token and a CSR (its key never leaves it) and receives a
//! certificate naming its id and the token's groups.

use std::pin::Pin;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use shoal_proto::identity::{parse_identity, validate_label};
use shoal_proto::pb;
use shoal_proto::pki::IssueRequest;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{Shared, SharedRef, internal};
use crate::auth::Caller;
use crate::fleet::Online;
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

    /// The caller's enrollment record, refusing revoked or unknown agents.
    fn enrolled(&self, id: &str) -> Result<AgentRecord, Status> {
        let rec = self
            .shared
            .state
            .agent(id)
            .map_err(internal)?
            .ok_or_else(|| Status::permission_denied(format!("agent {id} is not enrolled")))?;
        if rec.revoked.is_some() {
            return Err(Status::permission_denied(format!("agent {id} is revoked")));
        }
        Ok(rec)
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
        rec.fingerprint = id.fingerprint;
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

/// Updates queued per session; a session that cannot keep up is ended
/// (the agent reconnects and gets the current state).
const SESSION_QUEUE: usize = 16;

/// The revocation list as agents get it: revoked ids and their serials.
fn revocations(shared: &Shared) -> Result<pb::Revocations, Status> {
    let mut r = pb::Revocations::default();
    for a in shared.state.agents().map_err(internal)? {
        if a.revoked.is_some() {
            r.agent_ids.push(a.agent_id);
            if !a.serial.is_empty() {
                r.serials.push(a.serial);
            }
        }
    }
    Ok(r)
}

/// Every other enrolled, unrevoked agent that has reported where it
/// listens, online or not: agents keep trying offline ones, and a restarted
/// controller hands out a full roster before anyone has reconnected.
fn roster(shared: &Shared, except: &str) -> Result<pb::Roster, Status> {
    let mut peers: Vec<pb::RosterPeer> = shared
        .state
        .agents()
        .map_err(internal)?
        .into_iter()
        .filter(|a| a.agent_id != except && a.revoked.is_none() && !a.addrs.is_empty())
        .map(|a| pb::RosterPeer {
            agent_id: a.agent_id,
            addrs: a.addrs,
            cert_fingerprint: a.fingerprint,
            groups: a.groups,
        })
        .collect();
    peers.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
    Ok(pb::Roster { peers })
}

/// One agent's session: sends its effective policy, the current roster and
/// revocations, again (each only if it changed) whenever the fleet changes, and takes the agent's reports. Ends when
/// the agent hangs up, is revoked, or the controller stops.
async fn run_session(
    shared: SharedRef,
    id: String,
    session: u64,
    mut reports: Streaming<pb::AgentReport>,
    tx: mpsc::Sender<Result<pb::ControllerUpdate, Status>>,
) {
    let mut changed = shared.fleet.subscribe();
    changed.mark_changed();
    let (mut sent_revocations, mut sent_roster, mut sent_policy) = (None, None, None);
    let why = loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => break "controller shutting down".to_owned(),
            r = changed.changed() => {
                if r.is_err() {
                    break "controller shutting down".to_owned();
                }
                let revoked = match revocations(&shared) {
                    Ok(r) => r,
                    Err(e) => break e.message().to_owned(),
                };
                if revoked.agent_ids.contains(&id) {
                    let _ = tx.send(Err(Status::permission_denied(format!("agent {id} is revoked")))).await;
                    break "revoked".to_owned();
                }
                let peers = match roster(&shared, &id) {
                    Ok(r) => r,
                    Err(e) => break e.message().to_owned(),
                };
                let policy = match shared.state.agent(&id) {
                    Ok(Some(rec)) => match super::policies::effective_for(&shared, &rec) {
                        Ok(p) => p,
                        Err(e) => break e.message().to_owned(),
                    },
                    Ok(None) => break "agent no longer enrolled".to_owned(),
                    Err(e) => break e.to_string(),
                };
                let mut updates = Vec::new();
                if sent_policy.as_ref() != Some(&policy) {
                    updates.push(pb::controller_update::Update::Policy(policy.clone()));
                    sent_policy = Some(policy);
                }
                if sent_revocations.as_ref() != Some(&revoked) {
                    updates.push(pb::controller_update::Update::Revocations(revoked.clone()));
                    sent_revocations = Some(revoked);
                }
                if sent_roster.as_ref() != Some(&peers) {
                    updates.push(pb::controller_update::Update::Roster(peers.clone()));
                    sent_roster = Some(peers);
                }
                for u in updates {
                    if tx.try_send(Ok(pb::ControllerUpdate { update: Some(u) })).is_err() {
                        break;
                    }
                }
                if tx.is_closed() || tx.capacity() == 0 {
                    break "agent not reading its session".to_owned();
                }
            }
            msg = reports.message() => match msg {
                Ok(Some(report)) => apply_report(&shared, &id, session, report).await,
                Ok(None) => break "agent closed the session".to_owned(),
                Err(s) => break format!("{:?}: {}", s.code(), s.message()),
            },
        }
    };
    shared.fleet.leave(&id, session);
    tracing::info!(agent = %id, "session ended: {why}");
}

async fn apply_report(shared: &Shared, id: &str, session: u64, report: pb::AgentReport) {
    let now = crate::now_ms();
    match report.report {
        Some(pb::agent_report::Report::Hello(h)) => {
            shared.fleet.report(id, session, |o| {
                o.last_seen_ms = now;
                o.policy_version = h.policy_version;
                false
            });
            // New addresses change everyone's roster: keep them, then tell.
            match shared.state.agent(id) {
                Ok(Some(mut rec)) if rec.addrs != h.listen_addrs => {
                    rec.addrs = h.listen_addrs;
                    match shared.state.put_agent(&rec).await {
                        Ok(()) => shared.fleet.bump(),
                        Err(e) => tracing::error!(agent = %id, "saving addresses: {e}"),
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::error!(agent = %id, "reading the agent: {e}"),
            }
        }
        Some(pb::agent_report::Report::Status(st)) => shared.fleet.report(id, session, |o| {
            o.last_seen_ms = now;
            o.policy_version = st.policy_version;
            false
        }),
        None => {}
    }
}

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
            fingerprint: String::new(),
            addrs: Vec::new(),
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
        let rec = self.enrolled(id)?;
        let certificate_pem = self.issue(rec, &req.into_inner().csr_pem).await?;
        tracing::info!(agent = %id, "certificate renewed");
        Ok(Response::new(pb::RenewResponse { certificate_pem }))
    }

    type SessionStream = BoxStream<pb::ControllerUpdate>;

    async fn session(
        &self,
        req: Request<Streaming<pb::AgentReport>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let caller = Caller::of(&req)?;
        let id = caller.identity.agent_id.clone();
        self.enrolled(&id)?;
        let reports = req.into_inner();
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        let session = self.shared.fleet.join(
            &id,
            Online {
                last_seen_ms: crate::now_ms(),
                policy_version: 0,
                session: 0,
            },
        );
        tracing::info!(agent = %id, "session opened");
        let shared = self.shared.clone();
        self.shared
            .tasks
            .spawn(run_session(shared, id, session, reports, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
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

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

use super::{SharedRef, internal};
use crate::auth::Caller;
use crate::fleet::Online;
use crate::state::{AgentRecord, StateError};
use crate::tokens::token_hash;
use crate::view::FleetView;

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

/// Sessions look for fleet changes this often, each at a phase of its
/// own ([`phase_for`]), rather than being woken by every change: waking
/// 5,000 sessions at once took 10-15 ms of both workers per change and
/// queued everything behind it, and 5,000 agents answering an update in
/// the same instant queued their status reports behind each other (acks
/// p99 120-167 ms at one policy change a second; checked in phases, under
/// 15 ms). Changes within one period cost a session one update.
const SESSION_CHECK: std::time::Duration = std::time::Duration::from_millis(1000);

/// A session retries this soon when the shared view it got was older than
/// the change it looked for (views are rebuilt at most every 250 ms).
const SESSION_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

/// This agent's phase within [`SESSION_CHECK`]: stable per id, spread
/// evenly over the fleet.
fn phase_for(id: &str) -> std::time::Duration {
    let h = blake3::hash(id.as_bytes());
    let x = u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or_default());
    SESSION_CHECK.mul_f64((x >> 11) as f64 / (1u64 << 53) as f64)
}

/// What one session last sent, so it sends only what changed.
#[derive(Debug, Default)]
struct Sent {
    policy: Option<pb::Policy>,
    revocations: Option<pb::Revocations>,
    /// The roster generation last sent (the roster itself is not kept:
    /// thousands of sessions each holding hundreds of peers was most of
    /// the controller's memory).
    roster_generation: Option<u64>,
    roster_hash: Option<blake3::Hash>,
    assignments: Option<pb::Assignments>,
    acls: Option<pb::PackageAcls>,
    withdrawals: Option<pb::Withdrawals>,
}

impl Sent {
    /// The updates `view` calls for that were not sent yet; `Err` ends the
    /// session with the reason.
    fn updates(
        &mut self,
        view: &FleetView,
        id: &str,
    ) -> Result<Vec<pb::controller_update::Update>, String> {
        use pb::controller_update::Update;
        if view.revocations.agent_ids.iter().any(|a| a == id) {
            return Err("revoked".into());
        }
        let Some(rec) = view.agents.get(id) else {
            return Err("agent no longer enrolled".into());
        };
        let mut out = Vec::new();
        let policy = view.policy_for(rec);
        if self.policy.as_ref() != Some(&policy) {
            out.push(Update::Policy(policy.clone()));
            self.policy = Some(policy);
        }
        if self.revocations.as_ref() != Some(&view.revocations) {
            out.push(Update::Revocations(view.revocations.clone()));
            self.revocations = Some(view.revocations.clone());
        }
        if self.roster_generation != Some(view.roster_generation) {
            let roster = view.roster_for(rec);
            let hash = blake3::hash(&prost::Message::encode_to_vec(&roster));
            if self.roster_hash != Some(hash) {
                out.push(Update::Roster(roster));
                self.roster_hash = Some(hash);
            }
            self.roster_generation = Some(view.roster_generation);
        }
        // Restrictions and withdrawals before assignments: an agent must
        // know whom it may serve before it holds the package.
        if self.acls.as_ref() != Some(&view.acls) {
            out.push(Update::Acls(view.acls.clone()));
            self.acls = Some(view.acls.clone());
        }
        if self.withdrawals.as_ref() != Some(&view.withdrawals) {
            out.push(Update::Withdrawals(view.withdrawals.clone()));
            self.withdrawals = Some(view.withdrawals.clone());
        }
        let assignments = view.assignments.get(id).cloned().unwrap_or_default();
        if self.assignments.as_ref() != Some(&assignments) {
            out.push(Update::Assignments(assignments.clone()));
            self.assignments = Some(assignments);
        }
        Ok(out)
    }
}

/// One agent's session: sends its effective policy, revocations, roster,
/// package restrictions, withdrawals and assignments, again (each only if
/// it changed) whenever the fleet changes, and takes the agent's reports,
/// acknowledging each status. Ends when the agent hangs up, is revoked, or
/// the controller stops.
async fn run_session(
    shared: SharedRef,
    id: String,
    session: u64,
    mut reports: Streaming<pb::AgentReport>,
    tx: mpsc::Sender<Result<pb::ControllerUpdate, Status>>,
) {
    // The first update goes at once; after that the session checks for
    // changes once per period at its phase. Reports are read and
    // acknowledged meanwhile.
    let start = tokio::time::Instant::now();
    let mut check = tokio::time::interval_at(start + phase_for(&id), SESSION_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut due = Some(start);
    let mut sent_generation: Option<u64> = None;
    let mut sent = Sent::default();
    let why = loop {
        let deadline = due.unwrap_or(start);
        tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => break "controller shutting down".to_owned(),
            _ = check.tick(), if due.is_none() => {
                if sent_generation != Some(shared.fleet.generation()) {
                    due = Some(tokio::time::Instant::now());
                }
            }
            _ = tokio::time::sleep_until(deadline), if due.is_some() => {
                due = None;
                let generation = shared.fleet.generation();
                let view = match shared.views.get(&shared, generation).await {
                    Ok(v) => v,
                    Err(e) => break e.message().to_owned(),
                };
                let updates = match sent.updates(&view, &id) {
                    Ok(u) => u,
                    Err(why) => {
                        if why == "revoked" {
                            let _ = tx.send(Err(Status::permission_denied(format!("agent {id} is revoked")))).await;
                        }
                        break why;
                    }
                };
                if !send_all(&tx, updates) {
                    break "agent not reading its session".to_owned();
                }
                if view.generation < generation {
                    // An older view, shared under load: come back for the new one.
                    due = Some(tokio::time::Instant::now() + SESSION_RETRY);
                } else {
                    sent_generation = Some(view.generation);
                }
            }
            msg = reports.message() => match msg {
                Ok(Some(report)) => {
                    if let Some(seq) = apply_report(&shared, &id, session, report).await {
                        let ack = pb::controller_update::Update::Ack(pb::StatusAck { seq });
                        if !send_all(&tx, vec![ack]) {
                            break "agent not reading its session".to_owned();
                        }
                    }
                }
                Ok(None) => break "agent closed the session".to_owned(),
                Err(s) => break format!("{:?}: {}", s.code(), s.message()),
            },
        }
    };
    shared.fleet.leave(&id, session);
    tracing::info!(agent = %id, "session ended: {why}");
}

/// Queues `updates` without waiting; false if the agent is not keeping up
/// (the session then ends, and the agent reconnects to a fresh state).
fn send_all(
    tx: &mpsc::Sender<Result<pb::ControllerUpdate, Status>>,
    updates: Vec<pb::controller_update::Update>,
) -> bool {
    for u in updates {
        if tx
            .try_send(Ok(pb::ControllerUpdate { update: Some(u) }))
            .is_err()
        {
            return false;
        }
    }
    !tx.is_closed()
}

/// Takes one report; returns the sequence number of a status report to
/// acknowledge.
async fn apply_report(
    shared: &SharedRef,
    id: &str,
    session: u64,
    report: pb::AgentReport,
) -> Option<u64> {
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
            None
        }
        Some(pb::agent_report::Report::Status(st)) => {
            shared.metrics.status_reports.inc();
            shared.fleet.report(id, session, |o| {
                o.last_seen_ms = now;
                o.policy_version = st.policy_version;
                o.bytes_from_peers = st.bytes_from_peers;
                o.bytes_from_origin = st.bytes_from_origin;
                false
            });
            if let Err(e) = track_rollouts(shared, id, &st, now).await {
                tracing::error!(agent = %id, "recording rollout progress: {e}");
            }
            Some(st.seq)
        }
        None => None,
    }
}

/// Records where the agent stands in its rollouts and releases waves that
/// became due.
async fn track_rollouts(
    shared: &SharedRef,
    id: &str,
    st: &pb::Status,
    now: i64,
) -> Result<(), StateError> {
    let view = shared
        .views
        .get(shared, 0)
        .await
        .map_err(|s| StateError::Db(sled::Error::Unsupported(s.message().to_owned())))?;
    let Some(rec) = view.agents.get(id) else {
        return Ok(());
    };
    if shared.rollouts.observe(&shared.state, rec, st, now).await? {
        let agents: Vec<AgentRecord> = view.agents.values().cloned().collect();
        if shared.rollouts.advance(&shared.state, &agents).await? {
            shared.fleet.bump();
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl pb::agent_control_server::AgentControl for AgentControlService {
    #[tracing::instrument(name = "agent.enroll", skip_all, fields(hostname = %req.get_ref().hostname))]
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
        self.shared.metrics.enrollments.inc();
        tracing::info!(agent = %rec.agent_id, groups = ?rec.groups, hostname = %r.hostname, "agent enrolled");
        Ok(Response::new(pb::EnrollResponse {
            agent_id: rec.agent_id,
            groups: rec.groups,
            certificate_pem,
            ca_certificate_pem: self.shared.ca.cert_pem().to_owned(),
        }))
    }

    #[tracing::instrument(name = "agent.renew", skip_all)]
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
                ..Default::default()
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
        req: Request<pb::GetManifestRequest>,
    ) -> Result<Response<pb::GetManifestResponse>, Status> {
        let caller = Caller::of(&req)?;
        self.enrolled(&caller.identity.agent_id)?;
        super::catalog::manifest_for(&self.shared, &caller.identity, req.into_inner())
            .map(Response::new)
    }

    async fn search_catalog(
        &self,
        req: Request<pb::SearchCatalogRequest>,
    ) -> Result<Response<pb::SearchCatalogResponse>, Status> {
        let caller = Caller::of(&req)?;
        self.enrolled(&caller.identity.agent_id)?;
        let entries =
            super::catalog::search_for_agent(&self.shared, &caller.identity, req.get_ref())?;
        Ok(Response::new(pb::SearchCatalogResponse { entries }))
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

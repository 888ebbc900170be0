//! What agent sessions send, computed once per fleet change.
//!
//! Every session used to read and decode the whole agent table on every
//! change; with thousands of sessions that is quadratic. [`Views`] builds
//! one [`FleetView`] per change generation (the first session to ask pays)
//! and hands every session the same `Arc`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_proto::pb;
use tonic::Status;

use crate::service::{Shared, internal};
use crate::state::AgentRecord;

/// Rosters longer than this are cut per agent (peers sharing a group
/// first, then a per-agent pseudo-random pick), so one enrollment does not
/// send every agent of a large fleet a message with every other agent.
pub const ROSTER_MAX: usize = 512;

/// The fleet as sessions see it at one generation.
#[derive(Debug, Default)]
pub struct FleetView {
    pub generation: u64,
    /// The generation at which [`FleetView::roster`] last changed: sessions
    /// that sent a roster since skip recomputing theirs (ranking thousands
    /// of peers per session per policy change was most of the controller's
    /// CPU at 5,000 agents).
    pub roster_generation: u64,
    /// [`crate::state::State::agents_version`] the agent part was read at.
    agents_version: u64,
    pub agents: Arc<HashMap<String, AgentRecord>>,
    pub revocations: pb::Revocations,
    /// Every unrevoked agent that reported an address, by agent id.
    pub roster: Arc<Vec<pb::RosterPeer>>,
    pub acls: pb::PackageAcls,
    pub withdrawals: pb::Withdrawals,
    pub assignments: HashMap<String, pb::Assignments>,
    pub policy_version: u64,
    pub policies: Vec<crate::policy::PolicyDoc>,
}

impl FleetView {
    /// Reads the fleet's state. What derives from the agent table (the
    /// records, revocations, the roster) is taken from `prev` when the
    /// table has not changed since: a policy change then costs no decoding
    /// of thousands of agent records.
    fn build(shared: &Shared, generation: u64, prev: Option<&FleetView>) -> Result<Self, Status> {
        let state = &shared.state;
        let agents_version = state.agents_version();
        let (agents, revocations, roster) = match prev {
            Some(p) if p.agents_version == agents_version => {
                (p.agents.clone(), p.revocations.clone(), p.roster.clone())
            }
            _ => {
                let (agents, revocations, roster) = agent_part(state)?;
                (Arc::new(agents), revocations, Arc::new(roster))
            }
        };
        let mut acls = pb::PackageAcls::default();
        let mut withdrawals = pb::Withdrawals::default();
        let mut withdrawn = HashSet::new();
        for e in state.catalog().map_err(internal)? {
            let Ok(id) = hex::decode(&e.content_id) else {
                continue;
            };
            if e.withdrawn.is_some() {
                withdrawals.content_ids.push(id.into());
                withdrawn.insert(e.content_id);
            } else if !e.allowed_groups.is_empty() {
                acls.acls.push(pb::PackageAcl {
                    content_id: id.into(),
                    allowed_groups: e.allowed_groups,
                });
            }
        }
        let assignments = shared.rollouts.assignments(agents.values(), &withdrawn);
        let policies = state
            .policies()
            .map_err(internal)?
            .into_iter()
            .map(|p| p.doc)
            .collect();
        Ok(Self {
            generation,
            roster_generation: generation,
            agents_version,
            agents,
            revocations,
            roster,
            acls,
            withdrawals,
            assignments,
            policy_version: state.policy_version().map_err(internal)?,
            policies,
        })
    }

    /// The roster for `agent`: everyone else, or past [`ROSTER_MAX`] the
    /// peers sharing a group with it first, each agent its own pick.
    pub fn roster_for(&self, agent: &AgentRecord) -> pb::Roster {
        let others = self.roster.iter().filter(|p| p.agent_id != agent.agent_id);
        if self.roster.len() <= ROSTER_MAX {
            return pb::Roster {
                peers: others.cloned().collect(),
            };
        }
        let mut ranked: Vec<(bool, u64, &pb::RosterPeer)> = others
            .map(|p| {
                let shares = p.groups.iter().any(|g| agent.groups.contains(g));
                let h = blake3::hash(format!("{}\0{}", agent.agent_id, p.agent_id).as_bytes());
                let mut first = [0u8; 8];
                first.copy_from_slice(&h.as_bytes()[..8]);
                (!shares, u64::from_le_bytes(first), p)
            })
            .collect();
        ranked.sort_unstable_by_key(|(other_group, h, _)| (*other_group, *h));
        let mut peers: Vec<pb::RosterPeer> = ranked
            .into_iter()
            .take(ROSTER_MAX)
            .map(|(_, _, p)| p.clone())
            .collect();
        peers.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        pb::Roster { peers }
    }

    pub fn policy_for(&self, agent: &AgentRecord) -> pb::Policy {
        crate::policy::effective(&self.policies, agent, self.policy_version)
    }
}

/// The agent records by id, the revocation list and the roster, from the
/// agent table.
type AgentPart = (
    HashMap<String, AgentRecord>,
    pb::Revocations,
    Vec<pb::RosterPeer>,
);

fn agent_part(state: &crate::state::State) -> Result<AgentPart, Status> {
    let all = state.agents().map_err(internal)?;
    let mut revocations = pb::Revocations::default();
    for a in all.iter().filter(|a| a.revoked.is_some()) {
        revocations.agent_ids.push(a.agent_id.clone());
        if !a.serial.is_empty() {
            revocations.serials.push(a.serial.clone());
        }
    }
    let mut roster: Vec<pb::RosterPeer> = all
        .iter()
        .filter(|a| a.revoked.is_none() && !a.addrs.is_empty())
        .map(|a| pb::RosterPeer {
            agent_id: a.agent_id.clone(),
            addrs: a.addrs.clone(),
            cert_fingerprint: a.fingerprint.clone(),
            groups: a.groups.clone(),
        })
        .collect();
    roster.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
    let agents = all.into_iter().map(|a| (a.agent_id.clone(), a)).collect();
    Ok((agents, revocations, roster))
}

/// A view is rebuilt at most this often: under a storm of changes
/// (thousands of agents connecting) sessions share a slightly older view
/// and come back for the newer one (see [`FleetView::generation`]).
const MIN_REBUILD: Duration = Duration::from_millis(250);

/// The current view, rebuilt when the fleet's generation moves.
#[derive(Debug, Default)]
pub struct Views {
    /// An async lock: sessions waiting for a rebuild yield their worker
    /// instead of blocking it.
    current: tokio::sync::Mutex<Option<(Instant, Arc<FleetView>)>>,
    /// The newest view, readable without waiting for a rebuild in progress.
    latest: std::sync::RwLock<Option<Arc<FleetView>>>,
}

impl Views {
    /// The newest view; at least of `generation` unless one was built
    /// within [`MIN_REBUILD`], in which case the caller gets an older one
    /// and should ask again later. One caller builds (reading the agent
    /// table, on the blocking pool); the others wait for it.
    pub async fn get(
        &self,
        shared: &Arc<Shared>,
        generation: u64,
    ) -> Result<Arc<FleetView>, Status> {
        // Fast path: a view new enough exists; status reports (which ask
        // for any view) never queue behind a rebuild.
        if let Some(v) = self
            .latest
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|v| v.generation >= generation)
        {
            return Ok(v.clone());
        }
        let mut cur = self.current.lock().await;
        if let Some((built, v)) = cur.as_ref()
            && (v.generation >= generation || built.elapsed() < MIN_REBUILD)
        {
            return Ok(v.clone());
        }
        let s = shared.clone();
        let current = shared.fleet.generation();
        let prev = cur.as_ref().map(|(_, v)| v.clone());
        let mut v =
            tokio::task::spawn_blocking(move || FleetView::build(&s, current, prev.as_deref()))
                .await
                .map_err(|e| Status::internal(format!("building the fleet view: {e}")))??;
        if let Some((_, old)) = cur.as_ref()
            && old.roster == v.roster
        {
            v.roster_generation = old.roster_generation;
        }
        let v = Arc::new(v);
        *cur = Some((Instant::now(), v.clone()));
        *self.latest.write().unwrap_or_else(|p| p.into_inner()) = Some(v.clone());
        Ok(v)
    }
}

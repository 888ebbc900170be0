//! The policy calls of `Admin` (`ApplyPolicy`, `GetPolicy`) and each
//! agent's effective policy for its session.

use std::collections::BTreeSet;

use shoal_proto::pb;
use tonic::Status;

use super::{Shared, internal};
use crate::policy::{self, PolicyDoc};
use crate::state::AgentRecord;

/// Validates `yaml` in full against the groups of the enrolled agents; on
/// success and unless `dry_run`, stores every document under a new version
/// and tells the sessions. A refused file is `InvalidArgument` and leaves
/// everything as it was.
pub async fn apply(
    shared: &super::SharedRef,
    yaml: &str,
    dry_run: bool,
) -> Result<pb::ApplyPolicyResponse, Status> {
    // The groups of the fleet view the sessions share: decoding every
    // agent record per apply stalled a worker for milliseconds at 5,000
    // agents. The view may miss an agent enrolled a moment ago, so a file
    // it refuses is checked again against the agent table itself.
    let view = shared.views.get(shared, 0).await?;
    let known: BTreeSet<String> = view
        .agents
        .values()
        .flat_map(|a| a.groups.iter().cloned())
        .collect();
    let parsed = match policy::parse(yaml, &known) {
        Ok(p) => p,
        Err(_) => {
            let known: BTreeSet<String> = shared
                .state
                .agents()
                .map_err(internal)?
                .into_iter()
                .flat_map(|a| a.groups)
                .collect();
            policy::parse(yaml, &known).map_err(|e| Status::invalid_argument(e.to_string()))?
        }
    };
    let applied: Vec<String> = parsed.iter().map(|p| p.doc.name.clone()).collect();
    if dry_run {
        let version = shared.state.policy_version().map_err(internal)?;
        return Ok(pb::ApplyPolicyResponse { version, applied });
    }
    let docs: Vec<(String, PolicyDoc)> = parsed.into_iter().map(|p| (p.yaml, p.doc)).collect();
    let version = shared.state.apply_policies(&docs).await.map_err(internal)?;
    shared.fleet.bump();
    tracing::info!(version, documents = ?applied, "policy applied");
    Ok(pb::ApplyPolicyResponse { version, applied })
}

/// One document by name, or (empty name) every document, `---`-separated;
/// the version is the document's, or the fleet's for all of them.
pub fn get(shared: &Shared, name: &str) -> Result<pb::GetPolicyResponse, Status> {
    let state = &shared.state;
    if name.is_empty() {
        let all = state.policies().map_err(internal)?;
        let yaml = all
            .iter()
            .map(|p| p.yaml.as_str())
            .collect::<Vec<_>>()
            .join("\n---\n");
        let version = state.policy_version().map_err(internal)?;
        return Ok(pb::GetPolicyResponse { yaml, version });
    }
    let p = state
        .policy(name)
        .map_err(internal)?
        .ok_or_else(|| Status::not_found(format!("no policy {name:?} has been applied")))?;
    Ok(pb::GetPolicyResponse {
        yaml: p.yaml,
        version: p.version,
    })
}

/// The effective policy of `agent` now.
pub fn effective_for(shared: &Shared, agent: &AgentRecord) -> Result<pb::Policy, Status> {
    let state = &shared.state;
    let version = state.policy_version().map_err(internal)?;
    let docs: Vec<PolicyDoc> = state
        .policies()
        .map_err(internal)?
        .into_iter()
        .map(|p| p.doc)
        .collect();
    Ok(policy::effective(&docs, agent, version))
}

//! The rollout calls: `Assign` (a package to a group, in waves) and
//! `RolloutStatus` (counts and a per-agent table).

use shoal_proto::pb;
use shoal_proto::pb::package_status::State as PkgState;
use tonic::Status;

use super::{Shared, internal};
use crate::auth::Caller;
use crate::rollout::{check_waves, members, wave_of};
use crate::state::RolloutRecord;

pub async fn assign(
    shared: &Shared,
    caller: &Caller,
    r: pb::AssignRequest,
) -> Result<pb::AssignResponse, Status> {
    let entry = shared
        .state
        .catalog_entry(&r.package)
        .map_err(internal)?
        .ok_or_else(|| {
            Status::not_found(format!(
                "{} is not in the catalog; register it first (`shoal-controller package register`)",
                r.package
            ))
        })?;
    if entry.withdrawn.is_some() {
        return Err(Status::failed_precondition(format!(
            "{} is withdrawn",
            entry.name_version()
        )));
    }
    let agents = shared.state.agents().map_err(internal)?;
    if !agents.iter().any(|a| a.groups.contains(&r.group)) {
        return Err(Status::invalid_argument(format!(
            "no enrolled agent is in group {:?}",
            r.group
        )));
    }
    if !entry.allowed_groups.is_empty() && !entry.allowed_groups.contains(&r.group) {
        return Err(Status::failed_precondition(format!(
            "{} is restricted to groups {}; {} may not fetch it",
            entry.name_version(),
            entry.allowed_groups.join(", "),
            r.group
        )));
    }
    let waves = if r.waves_percent.is_empty() {
        vec![100]
    } else {
        r.waves_percent.clone()
    };
    check_waves(&waves).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let package = entry.name_version();
    let rec = RolloutRecord {
        id: RolloutRecord::id_for(&package, &r.group),
        package,
        content_id: entry.content_id.clone(),
        group: r.group,
        waves,
        released: 1,
        deadline_ms: r.deadline_unix_ms,
        pin: r.pin,
        created_ms: crate::now_ms(),
        created_by: caller.name().to_owned(),
    };
    let id = rec.id.clone();
    shared
        .rollouts
        .put(&shared.state, rec)
        .await
        .map_err(internal)?;
    // Agents that hold it already settle the first wave at once.
    shared
        .rollouts
        .advance(&shared.state, &agents)
        .await
        .map_err(internal)?;
    shared.fleet.bump();
    tracing::info!(rollout = %id, by = %caller.name(), "package assigned");
    Ok(pb::AssignResponse { rollout_id: id })
}

pub fn status(
    shared: &Shared,
    r: &pb::RolloutStatusRequest,
) -> Result<pb::RolloutStatusResponse, Status> {
    let entry = shared
        .state
        .catalog_entry(&r.package)
        .map_err(internal)?
        .ok_or_else(|| Status::not_found(format!("{} is not in the catalog", r.package)))?;
    let package = entry.name_version();
    let of_package: Vec<RolloutRecord> = shared
        .rollouts
        .all()
        .into_iter()
        .filter(|x| x.package == package && (r.group.is_empty() || x.group == r.group))
        .collect();
    let rollout = match of_package.as_slice() {
        [] => {
            return Err(Status::not_found(format!(
                "{package} is not assigned{}",
                if r.group.is_empty() {
                    String::new()
                } else {
                    format!(" to group {}", r.group)
                }
            )));
        }
        [one] => one.clone(),
        many => {
            let groups: Vec<&str> = many.iter().map(|x| x.group.as_str()).collect();
            return Err(Status::invalid_argument(format!(
                "{package} is assigned to groups {}; name one with --group",
                groups.join(", ")
            )));
        }
    };
    let agents = shared.state.agents().map_err(internal)?;
    let m = members(&rollout, &agents);
    let progress = shared.rollouts.progress(&rollout.id);
    let mut out = pb::RolloutStatusResponse {
        package,
        group: rollout.group.clone(),
        current_wave: rollout.released,
        ..Default::default()
    };
    for (i, a) in m.iter().enumerate() {
        let wave = wave_of(&rollout.waves, m.len(), i);
        let online = shared.fleet.get(&a.agent_id).is_some();
        let p = progress.get(&a.agent_id);
        let state = p.map_or(PkgState::Unspecified as i32, |p| p.state);
        if state == PkgState::Complete as i32 {
            out.done += 1;
        } else if state == PkgState::Failed as i32 {
            out.failed += 1;
        } else if wave > rollout.released {
            out.pending += 1;
        } else if !online {
            out.offline += 1;
        } else {
            out.active += 1;
        }
        out.agents.push(pb::RolloutAgent {
            agent_id: a.agent_id.clone(),
            state,
            error: p.map(|p| p.error.clone()).unwrap_or_default(),
            online,
            wave,
            bytes_done: p.map_or(0, |p| p.bytes_done),
            bytes_total: p.map_or(entry.total_size, |p| p.bytes_total),
        });
    }
    Ok(out)
}

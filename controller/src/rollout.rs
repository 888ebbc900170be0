//! Rollouts: "group G must hold package P", wave by wave.
//!
//! A rollout's members are the group's unrevoked agents in enrollment
//! order (agents enrolled later join the last wave). Wave k holds the
//! first `ceil(waves[k] % × members)` of them; the first wave is released
//! at once, each next one when every agent released so far reports the
//! package complete or failed. Agents of a released wave get the package
//! in their session's assignments.
//!
//! [`Rollouts`] keeps every rollout and each member's last reported state
//! in memory (loaded from [`crate::state`] at start) and writes through
//! when a state changes, so status reports from thousands of agents cost
//! no disk writes unless something moved.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use shoal_proto::pb;
use shoal_proto::pb::package_status::State as PkgState;

use crate::state::{AgentProgress, AgentRecord, RolloutRecord, State, StateError};

/// Why a wave list is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WavesError {
    #[error("waves must rise from above 0 % to exactly 100 % (e.g. 5%,25%,100%); got {0}")]
    Invalid(String),
}

/// Parses `5%,25%,100%` (the `%` is optional); empty = one wave of 100 %.
pub fn parse_waves(text: &str) -> Result<Vec<u32>, WavesError> {
    if text.trim().is_empty() {
        return Ok(vec![100]);
    }
    let bad = || WavesError::Invalid(text.to_owned());
    let waves = text
        .split(',')
        .map(|w| w.trim().trim_end_matches('%').trim().parse::<u32>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| bad())?;
    check_waves(&waves).map_err(|_| bad())?;
    Ok(waves)
}

/// Waves rise strictly from above 0 to exactly 100.
pub fn check_waves(waves: &[u32]) -> Result<(), WavesError> {
    let rising = waves.windows(2).all(|w| w[0] < w[1]);
    if waves.is_empty() || waves[0] == 0 || waves.last() != Some(&100) || !rising {
        return Err(WavesError::Invalid(format!("{waves:?}")));
    }
    Ok(())
}

/// How many of `n` members waves 1..=k hold together, for each k.
pub fn wave_sizes(waves: &[u32], n: usize) -> Vec<usize> {
    waves
        .iter()
        .map(|&p| (n * p as usize).div_ceil(100))
        .collect()
}

/// The wave (from 1) of the member at `index` among `n`.
pub fn wave_of(waves: &[u32], n: usize, index: usize) -> u32 {
    let sizes = wave_sizes(waves, n);
    sizes
        .iter()
        .position(|&s| index < s)
        .map_or(waves.len() as u32, |w| w as u32 + 1)
}

/// The rollout's members, in wave order.
pub fn members<'a>(
    r: &RolloutRecord,
    agents: impl IntoIterator<Item = &'a AgentRecord>,
) -> Vec<&'a AgentRecord> {
    let mut m: Vec<&AgentRecord> = agents
        .into_iter()
        .filter(|a| a.revoked.is_none() && a.groups.contains(&r.group))
        .collect();
    m.sort_by(|a, b| (a.enrolled_ms, &a.agent_id).cmp(&(b.enrolled_ms, &b.agent_id)));
    m
}

/// Finished, for wave release: complete or failed.
pub fn settled(state: i32) -> bool {
    state == PkgState::Complete as i32 || state == PkgState::Failed as i32
}

#[derive(Debug, Default)]
struct Inner {
    rollouts: BTreeMap<String, RolloutRecord>,
    /// Rollout id → agent id → progress.
    progress: HashMap<String, HashMap<String, AgentProgress>>,
}

/// Every rollout and its members' progress.
#[derive(Debug, Default)]
pub struct Rollouts {
    inner: Mutex<Inner>,
}

impl Rollouts {
    pub fn load(state: &State) -> Result<Self, StateError> {
        let mut inner = Inner::default();
        for r in state.rollouts()? {
            inner.rollouts.insert(r.id.clone(), r);
        }
        for (rollout, agent, p) in state.all_progress()? {
            inner.progress.entry(rollout).or_default().insert(agent, p);
        }
        Ok(Self {
            inner: Mutex::new(inner),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn all(&self) -> Vec<RolloutRecord> {
        self.lock().rollouts.values().cloned().collect()
    }

    /// Stores a new or replaced rollout (durably first).
    pub async fn put(&self, state: &State, r: RolloutRecord) -> Result<(), StateError> {
        state.put_rollout(&r).await?;
        self.lock().rollouts.insert(r.id.clone(), r);
        Ok(())
    }

    pub fn progress(&self, rollout: &str) -> HashMap<String, AgentProgress> {
        self.lock()
            .progress
            .get(rollout)
            .cloned()
            .unwrap_or_default()
    }

    /// Takes one agent's status report: for every rollout of a group the
    /// agent is in, its state for that package. Writes what changed state;
    /// returns whether anything settled (complete or failed), which may
    /// release a wave.
    pub async fn observe(
        &self,
        state: &State,
        agent: &AgentRecord,
        status: &pb::Status,
        now_ms: i64,
    ) -> Result<bool, StateError> {
        let mut changed = Vec::new();
        {
            let mut inner = self.lock();
            let Inner { rollouts, progress } = &mut *inner;
            for r in rollouts.values() {
                if !agent.groups.contains(&r.group) {
                    continue;
                }
                let reported = status
                    .packages
                    .iter()
                    .chain(&status.assignment_errors)
                    .find(|p| hex::encode(&p.content_id) == r.content_id);
                let Some(p) = reported else { continue };
                let new = AgentProgress {
                    state: p.state,
                    error: p.error.clone(),
                    bytes_done: p.bytes_done,
                    bytes_total: p.bytes_total,
                    updated_ms: now_ms,
                };
                let slot = progress
                    .entry(r.id.clone())
                    .or_default()
                    .entry(agent.agent_id.clone());
                match slot {
                    std::collections::hash_map::Entry::Occupied(mut o) => {
                        let old = o.get_mut();
                        let moved = old.state != new.state || old.error != new.error;
                        *old = new.clone();
                        if moved {
                            changed.push((r.id.clone(), new));
                        }
                    }
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(new.clone());
                        changed.push((r.id.clone(), new));
                    }
                }
            }
        }
        let mut settled_any = false;
        for (rollout, p) in changed {
            settled_any |= settled(p.state);
            state.put_progress(&rollout, &agent.agent_id, &p).await?;
        }
        Ok(settled_any)
    }

    /// Releases every wave whose predecessors have settled; returns
    /// whether any was released (sessions then send new assignments).
    pub async fn advance(&self, state: &State, agents: &[AgentRecord]) -> Result<bool, StateError> {
        let mut released = Vec::new();
        {
            let inner = self.lock();
            for r in inner.rollouts.values() {
                let empty = HashMap::new();
                let progress = inner.progress.get(&r.id).unwrap_or(&empty);
                let m = members(r, agents);
                let sizes = wave_sizes(&r.waves, m.len());
                let mut rel = r.released.max(1) as usize;
                while rel < r.waves.len() {
                    let upto = sizes[rel - 1];
                    let done = m[..upto]
                        .iter()
                        .all(|a| progress.get(&a.agent_id).is_some_and(|p| settled(p.state)));
                    if !done {
                        break;
                    }
                    rel += 1;
                }
                if rel as u32 != r.released {
                    let mut next = r.clone();
                    next.released = rel as u32;
                    released.push(next);
                }
            }
        }
        let any = !released.is_empty();
        for r in released {
            tracing::info!(rollout = %r.id, wave = r.released, of = r.waves.len(), "rollout wave released");
            self.put(state, r).await?;
        }
        Ok(any)
    }

    /// For each agent, the assignments of the rollouts whose released
    /// waves include it, skipping withdrawn packages.
    pub fn assignments<'a>(
        &self,
        agents: impl IntoIterator<Item = &'a AgentRecord>,
        withdrawn: &std::collections::HashSet<String>,
    ) -> HashMap<String, pb::Assignments> {
        let agents: Vec<&AgentRecord> = agents.into_iter().collect();
        let mut out: HashMap<String, pb::Assignments> = HashMap::new();
        for r in self.all() {
            if withdrawn.contains(&r.content_id) {
                continue;
            }
            let Ok(id) = hex::decode(&r.content_id) else {
                continue;
            };
            let (name, version) = r.package.split_once('@').unwrap_or((&r.package, ""));
            let m = members(&r, agents.iter().copied());
            let sizes = wave_sizes(&r.waves, m.len());
            let upto = sizes
                .get(r.released.max(1) as usize - 1)
                .copied()
                .unwrap_or(m.len());
            for a in &m[..upto.min(m.len())] {
                out.entry(a.agent_id.clone())
                    .or_default()
                    .assignments
                    .push(pb::Assignment {
                        content_id: bytes::Bytes::from(id.clone()),
                        name: name.to_owned(),
                        version: version.to_owned(),
                        deadline_unix_ms: r.deadline_ms,
                        priority: 0,
                        pin: r.pin,
                    });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waves_parse_and_check() {
        assert_eq!(parse_waves("5%,25%,100%"), Ok(vec![5, 25, 100]));
        assert_eq!(parse_waves(" 50 , 100 "), Ok(vec![50, 100]));
        assert_eq!(parse_waves(""), Ok(vec![100]));
        for bad in [
            "0%,100%",
            "50%",
            "50%,40%,100%",
            "5%,x",
            "100%,100%",
            "50,150",
        ] {
            assert!(parse_waves(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn members_fall_into_waves_by_cumulative_percent() {
        let waves = [5, 25, 100];
        assert_eq!(wave_sizes(&waves, 40), vec![2, 10, 40]);
        assert_eq!(wave_of(&waves, 40, 0), 1);
        assert_eq!(wave_of(&waves, 40, 1), 1);
        assert_eq!(wave_of(&waves, 40, 2), 2);
        assert_eq!(wave_of(&waves, 40, 9), 2);
        assert_eq!(wave_of(&waves, 40, 10), 3);
        assert_eq!(wave_of(&waves, 40, 39), 3);
        // Small groups: every wave gets at least one agent where it can.
        assert_eq!(wave_sizes(&waves, 3), vec![1, 1, 3]);
        assert_eq!(wave_sizes(&waves, 0), vec![0, 0, 0]);
    }
}

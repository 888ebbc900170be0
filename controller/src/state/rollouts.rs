//! Rollouts (`rollouts-1`, by rollout id) and where each agent stands in
//! one (`rollout-agents-1`, by rollout id, NUL, agent id). Progress is
//! written when an agent's state in a rollout changes, not on every
//! report, so a fleet reporting every few seconds costs few writes, and
//! a restarted controller still knows who finished.

use serde::{Deserialize, Serialize};

use super::{State, StateError, decode, encode};

/// "Group G must hold package P", released wave by wave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutRecord {
    /// `name@version#group`.
    pub id: String,
    /// `name@version`.
    pub package: String,
    /// Lowercase hex.
    pub content_id: String,
    pub group: String,
    /// Cumulative wave sizes in percent, ascending, the last 100.
    pub waves: Vec<u32>,
    /// Waves released so far, from 1 (the first wave starts at once).
    pub released: u32,
    /// Milliseconds since the Unix epoch; 0 = none.
    pub deadline_ms: i64,
    pub pin: bool,
    pub created_ms: i64,
    pub created_by: String,
}

impl RolloutRecord {
    pub fn id_for(package: &str, group: &str) -> String {
        format!("{package}#{group}")
    }
}

/// One agent's last known state in a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentProgress {
    /// `pb::package_status::State` as a number.
    pub state: i32,
    pub error: String,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub updated_ms: i64,
}

fn progress_key(rollout: &str, agent: &str) -> Vec<u8> {
    let mut k = rollout.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(agent.as_bytes());
    k
}

impl State {
    pub async fn put_rollout(&self, r: &RolloutRecord) -> Result<(), StateError> {
        let _writing = self.gate.read().await;
        self.rollouts.insert(r.id.as_bytes(), encode(r))?;
        self.flush().await
    }

    pub fn rollouts(&self) -> Result<Vec<RolloutRecord>, StateError> {
        self.rollouts
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    pub async fn put_progress(
        &self,
        rollout: &str,
        agent: &str,
        p: &AgentProgress,
    ) -> Result<(), StateError> {
        let _writing = self.gate.read().await;
        self.rollout_agents
            .insert(progress_key(rollout, agent), encode(p))?;
        self.flush().await
    }

    /// Every agent's progress in every rollout: (rollout id, agent id, progress).
    pub fn all_progress(&self) -> Result<Vec<(String, String, AgentProgress)>, StateError> {
        self.rollout_agents
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let text = String::from_utf8_lossy(&k).into_owned();
                let (rollout, agent) = text.split_once('\0').unwrap_or((&text, ""));
                Ok((rollout.to_owned(), agent.to_owned(), decode(&k, &v)?))
            })
            .collect()
    }
}

//! Who is online right now: one entry per open agent session, plus the
//! fleet's change counter. Sessions check the counter (each at its own
//! phase, see `service::agent_control`) and send every agent what changed
//! for it (see [`crate::view`]). In memory only: after a restart agents
//! reconnect and report again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// One online agent, as its session reported it.
#[derive(Debug, Clone, Default)]
pub struct Online {
    pub last_seen_ms: i64,
    pub policy_version: u64,
    /// Counters from its last status report.
    pub bytes_from_peers: u64,
    pub bytes_from_origin: u64,
    /// Distinguishes a reconnect from the session it replaced.
    pub session: u64,
}

/// The online agents and the fleet's change counter.
#[derive(Debug)]
pub struct Fleet {
    online: Mutex<HashMap<String, Online>>,
    changed: AtomicU64,
    next_session: std::sync::atomic::AtomicU64,
}

impl Default for Fleet {
    fn default() -> Self {
        Self {
            online: Mutex::default(),
            changed: AtomicU64::new(0),
            next_session: 1.into(),
        }
    }
}

impl Fleet {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Online>> {
        self.online.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that something sessions send changed (policy, roster,
    /// revocations, catalog, assignments).
    pub fn bump(&self) {
        self.changed.fetch_add(1, Ordering::AcqRel);
    }

    /// The change counter now.
    pub fn generation(&self) -> u64 {
        self.changed.load(Ordering::Acquire)
    }

    /// Marks `agent` online; returns its session number.
    pub fn join(&self, agent: &str, mut entry: Online) -> u64 {
        let session = self
            .next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        entry.session = session;
        self.lock().insert(agent.to_owned(), entry);
        session
    }

    /// Updates what `agent` reported; `f` says whether sessions need to
    /// hear of it.
    pub fn report(&self, agent: &str, session: u64, f: impl FnOnce(&mut Online) -> bool) {
        let changed = match self.lock().get_mut(agent) {
            Some(e) if e.session == session => f(e),
            _ => false,
        };
        if changed {
            self.bump();
        }
    }

    /// Marks `agent` offline, unless a newer session replaced this one.
    /// Sessions need not hear of it: what they send lists agents online or
    /// not.
    pub fn leave(&self, agent: &str, session: u64) {
        let mut online = self.lock();
        if online.get(agent).is_some_and(|e| e.session == session) {
            online.remove(agent);
        }
    }

    pub fn get(&self, agent: &str) -> Option<Online> {
        self.lock().get(agent).cloned()
    }
}

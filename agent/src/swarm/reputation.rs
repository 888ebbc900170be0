//! Peer reputation: bad chunks count against the peer that sent them; past
//! a threshold the peer is banned for a while, agent-wide.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct Record {
    strikes: u32,
    banned_until: Option<Instant>,
}

/// Strikes and bans, keyed by agent id.
#[derive(Debug)]
pub struct Reputation {
    threshold: u32,
    ban: Duration,
    peers: Mutex<HashMap<String, Record>>,
}

impl Reputation {
    pub fn new(threshold: u32, ban: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            ban,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// Records a bad chunk. Returns true when this strike bans the peer.
    pub fn strike(&self, agent_id: &str) -> bool {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let r = peers.entry(agent_id.to_owned()).or_default();
        r.strikes += 1;
        if r.strikes >= self.threshold && r.banned_until.is_none() {
            r.banned_until = Some(Instant::now() + self.ban);
            return true;
        }
        false
    }

    pub fn is_banned(&self, agent_id: &str) -> bool {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        match peers.get_mut(agent_id) {
            Some(r) => match r.banned_until {
                Some(t) if t > Instant::now() => true,
                Some(_) => {
                    // Ban served: start over with a clean record.
                    *r = Record::default();
                    false
                }
                None => false,
            },
            None => false,
        }
    }

    pub fn strikes(&self, agent_id: &str) -> u32 {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.get(agent_id).map_or(0, |r| r.strikes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bans_at_threshold_and_expires() {
        let r = Reputation::new(3, Duration::from_millis(30));
        assert!(!r.strike("a") && !r.strike("a"));
        assert!(!r.is_banned("a"));
        assert!(r.strike("a"));
        assert!(r.is_banned("a") && !r.is_banned("b"));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!r.is_banned("a"));
        assert_eq!(r.strikes("a"), 0);
    }
}

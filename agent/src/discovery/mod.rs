//! Discovery: who the peers are and where to reach them.
//!
//! [`PeerTable`] is the one list every other part reads; sources feed it:
//! mDNS on the LAN ([`mdns`]), static peers from config (below), and the
//! controller's roster for peers across subnets ([`PeerTable::sync_source`],
//! fed by `crate::control`). Entries that stop
//! answering age out: an entry neither refreshed by its source nor heard
//! from by the swarm ([`PeerTable::contacted`]) for half the peer timeout
//! is probed with a TCP connect and dropped if nothing answers.

pub mod mdns;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How a peer became known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Mdns,
    Static,
    Roster,
}

impl Source {
    pub fn as_str(&self) -> &'static str {
        match self {
            Source::Mdns => "mdns",
            Source::Static => "static",
            Source::Roster => "roster",
        }
    }
}

/// A known peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEntry {
    /// Agent id when the source says it (mDNS, roster); static peers are
    /// identified by their certificate on first contact.
    pub agent_id: Option<String>,
    /// `ip:port` addresses, best first.
    pub addrs: Vec<String>,
    pub source: Source,
    /// SHA-256 certificate fingerprint the peer announced, if any.
    pub fingerprint: Option<String>,
    pub last_seen: Instant,
}

/// Key of an entry: the agent id, or `static:<addr>`.
pub type PeerKey = String;

/// What [`PeerTable::sync_source`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Synced {
    /// Entries of the source now in the table.
    pub listed: usize,
    /// Of those, how many are new.
    pub added: usize,
    /// The source's entries dropped because they were not given again.
    pub removed: usize,
    /// Entries skipped because another source holds their key.
    pub shadowed: usize,
}

/// The current set of peers, observable.
#[derive(Debug)]
pub struct PeerTable {
    self_id: String,
    tx: watch::Sender<Arc<BTreeMap<PeerKey, PeerEntry>>>,
    /// When the swarm last heard from a peer, by key. Kept beside the
    /// entries: a change to those clones the map every reader shares.
    contact: std::sync::Mutex<HashMap<PeerKey, Instant>>,
}

/// Probing a silent peer gives up after this long.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

impl PeerTable {
    pub fn new(self_id: &str) -> Self {
        Self {
            self_id: self_id.to_owned(),
            tx: watch::channel(Arc::new(BTreeMap::new())).0,
            contact: Default::default(),
        }
    }

    pub fn snapshot(&self) -> Arc<BTreeMap<PeerKey, PeerEntry>> {
        self.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<BTreeMap<PeerKey, PeerEntry>>> {
        self.tx.subscribe()
    }

    /// Adds or refreshes a peer. Ignores ourselves.
    pub fn upsert(&self, key: PeerKey, entry: PeerEntry) {
        if entry.agent_id.as_deref() == Some(self.self_id.as_str()) {
            return;
        }
        self.tx.send_if_modified(|map| {
            let changed = map
                .get(&key)
                .is_none_or(|old| old.addrs != entry.addrs || old.agent_id != entry.agent_id);
            Arc::make_mut(map).insert(key, entry);
            changed
        });
    }

    pub fn remove(&self, key: &str) {
        self.tx
            .send_if_modified(|map| Arc::make_mut(map).remove(key).is_some());
    }

    /// Makes `source`'s entries exactly `entries`: adds or refreshes them
    /// and drops that source's other entries, in one change. A key held by
    /// another source is left alone: that source knows the peer first-hand.
    pub fn sync_source(&self, source: Source, entries: Vec<(PeerKey, PeerEntry)>) -> Synced {
        let mut out = Synced::default();
        self.tx.send_if_modified(|map| {
            let wanted: HashSet<&PeerKey> = entries.iter().map(|(k, _)| k).collect();
            let map = Arc::make_mut(map);
            let before = map.len();
            map.retain(|k, e| e.source != source || wanted.contains(k));
            out.removed = before - map.len();
            let mut changed = out.removed > 0;
            for (key, entry) in entries {
                if entry.agent_id.as_deref() == Some(self.self_id.as_str()) {
                    continue;
                }
                match map.get(&key) {
                    Some(old) if old.source != source => {
                        out.shadowed += 1;
                        continue;
                    }
                    Some(old) => {
                        changed |= old.addrs != entry.addrs
                            || old.agent_id != entry.agent_id
                            || old.fingerprint != entry.fingerprint;
                    }
                    None => {
                        out.added += 1;
                        changed = true;
                    }
                }
                out.listed += 1;
                map.insert(key, entry);
            }
            changed
        });
        out
    }

    /// Records that the peer under `key` (its agent id, for mDNS and roster
    /// entries) just answered or called: it is alive, no probe needed.
    pub fn contacted(&self, key: &str) {
        let mut contact = self.contact.lock().unwrap_or_else(|p| p.into_inner());
        match contact.get_mut(key) {
            Some(t) => *t = Instant::now(),
            None => {
                contact.insert(key.to_owned(), Instant::now());
            }
        }
    }

    /// When `entry` (under `key`) was last seen by its source or heard
    /// from by the swarm, whichever is later.
    pub fn last_heard(&self, key: &str, entry: &PeerEntry) -> Instant {
        let contact = self.contact.lock().unwrap_or_else(|p| p.into_inner());
        contact
            .get(key)
            .map_or(entry.last_seen, |&c| c.max(entry.last_seen))
    }

    /// Ages out entries: anything neither seen nor contacted for
    /// `timeout / 2` is probed, and dropped if no address answers. Static
    /// peers stay (they are config).
    pub async fn sweep(&self, timeout: Duration) {
        let snapshot = self.snapshot();
        let stale: Vec<(PeerKey, Vec<String>)> = {
            let mut contact = self.contact.lock().unwrap_or_else(|p| p.into_inner());
            contact.retain(|k, _| snapshot.contains_key(k));
            snapshot
                .iter()
                .filter(|(k, e)| {
                    let heard = contact.get(*k).map_or(e.last_seen, |&c| c.max(e.last_seen));
                    e.source != Source::Static && heard.elapsed() > timeout / 2
                })
                .map(|(k, e)| (k.clone(), e.addrs.clone()))
                .collect()
        };
        for (key, addrs) in stale {
            let mut alive = false;
            for a in &addrs {
                if matches!(
                    tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(a)).await,
                    Ok(Ok(_))
                ) {
                    alive = true;
                    break;
                }
            }
            if alive {
                self.contacted(&key);
            } else {
                tracing::info!(peer = %key, "peer stopped answering; dropping it");
                self.remove(&key);
            }
        }
    }
}

/// Adds the configured static peers; they never age out.
pub fn add_static_peers(table: &PeerTable, peers: &[String]) {
    for p in peers {
        table.upsert(
            format!("static:{p}"),
            PeerEntry {
                agent_id: None,
                addrs: vec![p.clone()],
                source: Source::Static,
                fingerprint: None,
                last_seen: Instant::now(),
            },
        );
    }
}

/// Runs the aging sweep until cancelled.
pub async fn sweep_task(table: Arc<PeerTable>, timeout: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(timeout / 4);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => table.sweep(timeout).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(addr: &str, source: Source, age: Duration) -> PeerEntry {
        PeerEntry {
            agent_id: None,
            addrs: vec![addr.to_owned()],
            source,
            fingerprint: None,
            last_seen: Instant::now() - age,
        }
    }

    #[tokio::test]
    async fn silent_peers_age_out_answering_and_static_ones_stay() {
        let table = PeerTable::new("me");
        let alive = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let alive_addr = alive.local_addr().expect("addr").to_string();
        // A port nobody listens on: bind, note it, close.
        let dead_addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").to_string()
        };
        let old = Duration::from_secs(60);
        table.upsert("alive".into(), entry(&alive_addr, Source::Mdns, old));
        table.upsert("dead".into(), entry(&dead_addr, Source::Mdns, old));
        table.upsert(
            "fresh".into(),
            entry(&dead_addr, Source::Mdns, Duration::ZERO),
        );
        table.upsert("static".into(), entry(&dead_addr, Source::Static, old));
        // Silent to discovery but heard from by the swarm: not probed.
        table.upsert("busy".into(), entry(&dead_addr, Source::Mdns, old));
        table.contacted("busy");
        table.sweep(Duration::from_secs(30)).await;
        let keys: Vec<String> = table.snapshot().keys().cloned().collect();
        assert_eq!(keys, vec!["alive", "busy", "fresh", "static"]);
        assert!(
            table.contact.lock().expect("lock")["alive"].elapsed() < Duration::from_secs(5),
            "the probe counts as contact"
        );
    }

    #[test]
    fn sync_source_replaces_only_that_sources_entries() {
        let table = PeerTable::new("me");
        let with_id = |id: &str, addr: &str, source| {
            let mut e = entry(addr, source, Duration::ZERO);
            e.agent_id = Some(id.to_owned());
            (id.to_owned(), e)
        };
        let (k, e) = with_id("lan", "10.0.0.2:7400", Source::Mdns);
        table.upsert(k, e);
        add_static_peers(&table, &["10.0.0.3:7400".to_owned()]);
        let first = table.sync_source(
            Source::Roster,
            vec![
                with_id("a", "10.1.0.1:7400", Source::Roster),
                with_id("b", "10.1.0.2:7400", Source::Roster),
                with_id("lan", "10.1.0.9:7400", Source::Roster),
                with_id("me", "10.1.0.3:7400", Source::Roster),
            ],
        );
        assert_eq!(
            first,
            Synced {
                listed: 2,
                added: 2,
                removed: 0,
                shadowed: 1
            }
        );
        let second = table.sync_source(
            Source::Roster,
            vec![with_id("b", "10.1.0.22:7400", Source::Roster)],
        );
        assert_eq!((second.listed, second.added, second.removed), (1, 0, 1));
        let snap = table.snapshot();
        let keys: Vec<&str> = snap.keys().map(String::as_str).collect();
        assert_eq!(keys, vec!["b", "lan", "static:10.0.0.3:7400"]);
        assert_eq!(snap["b"].addrs, vec!["10.1.0.22:7400"]);
        assert_eq!(snap["lan"].source, Source::Mdns, "mDNS entry untouched");
        // An empty roster drops every roster entry and nothing else.
        table.sync_source(Source::Roster, Vec::new());
        assert_eq!(table.snapshot().len(), 2);
    }

    #[test]
    fn ignores_itself() {
        let table = PeerTable::new("me");
        let mut e = entry("127.0.0.1:1", Source::Mdns, Duration::ZERO);
        e.agent_id = Some("me".into());
        table.upsert("me".into(), e);
        assert!(table.snapshot().is_empty());
    }
}

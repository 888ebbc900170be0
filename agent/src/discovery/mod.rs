//! Discovery: who the peers are and where to reach them.
//!
//! [`PeerTable`] is the one list every other part reads; sources feed it:
//! mDNS on the LAN ([`mdns`]), static peers from config (below), and later
//! the controller's roster for peers across subnets. Entries that stop
//! answering age out: an entry not refreshed for half the peer timeout is
//! probed with a TCP connect and dropped if nothing answers.

pub mod mdns;

use std::collections::BTreeMap;
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

/// The current set of peers, observable.
#[derive(Debug)]
pub struct PeerTable {
    self_id: String,
    tx: watch::Sender<Arc<BTreeMap<PeerKey, PeerEntry>>>,
}

/// Probing a silent peer gives up after this long.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

impl PeerTable {
    pub fn new(self_id: &str) -> Self {
        Self {
            self_id: self_id.to_owned(),
            tx: watch::channel(Arc::new(BTreeMap::new())).0,
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

    fn touch(&self, key: &str) {
        self.tx.send_if_modified(|map| {
            if let Some(e) = Arc::make_mut(map).get_mut(key) {
                e.last_seen = Instant::now();
            }
            false
        });
    }

    /// Ages out entries: anything not seen for `timeout / 2` is probed, and
    /// dropped if no address answers. Static peers stay (they are config).
    pub async fn sweep(&self, timeout: Duration) {
        let stale: Vec<(PeerKey, Vec<String>)> = self
            .snapshot()
            .iter()
            .filter(|(_, e)| e.source != Source::Static && e.last_seen.elapsed() > timeout / 2)
            .map(|(k, e)| (k.clone(), e.addrs.clone()))
            .collect();
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
                self.touch(&key);
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
        table.sweep(Duration::from_secs(30)).await;
        let keys: Vec<String> = table.snapshot().keys().cloned().collect();
        assert_eq!(keys, vec!["alive", "fresh", "static"]);
        assert!(
            table.snapshot()["alive"].last_seen.elapsed() < Duration::from_secs(5),
            "probe refreshed it"
        );
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

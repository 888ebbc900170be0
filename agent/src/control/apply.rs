//! Turning what the controller sends into agent state: revocations into
//! deny-list entries, the roster into peer-table entries.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Instant;

use shoal_proto::identity::validate_label;
use shoal_proto::pb;

use crate::discovery::{PeerEntry, PeerKey, PeerTable, Source, Synced};
use crate::transport::tls::DenyList;

/// The deny list in force: the configured entries, every revoked agent id
/// and every revoked serial (lowercase hex, as certificates are read).
pub fn deny_entries(configured: &[String], revocations: &pb::Revocations) -> BTreeSet<String> {
    let serials = revocations
        .serials
        .iter()
        .map(|s| s.trim().replace(':', "").to_ascii_lowercase());
    let ids = revocations.agent_ids.iter().map(|a| a.trim().to_owned());
    configured
        .iter()
        .cloned()
        .chain(ids)
        .chain(serials)
        .filter(|e| !e.is_empty())
        .collect()
}

/// Replaces the deny list with the configured entries plus `revocations`.
pub fn apply_revocations(deny: &DenyList, configured: &[String], revocations: &pb::Revocations) {
    deny.replace(deny_entries(configured, revocations));
}

/// Peer-table entries for a roster: every peer but `self_id` with a valid
/// agent id and at least one usable `ip:port` address.
pub fn roster_entries(self_id: &str, roster: &pb::Roster) -> Vec<(PeerKey, PeerEntry)> {
    let now = Instant::now();
    roster
        .peers
        .iter()
        .filter(|p| p.agent_id != self_id && validate_label("agent id", &p.agent_id).is_ok())
        .filter_map(|p| {
            let addrs: Vec<String> = p
                .addrs
                .iter()
                .filter(|a| usable_addr(a))
                .cloned()
                .collect();
            if addrs.is_empty() {
                tracing::debug!(peer = %p.agent_id, addrs = ?p.addrs, "roster peer without a usable address; skipped");
                return None;
            }
            let entry = PeerEntry {
                agent_id: Some(p.agent_id.clone()),
                addrs,
                source: Source::Roster,
                fingerprint: (!p.cert_fingerprint.is_empty()).then(|| p.cert_fingerprint.clone()),
                last_seen: now,
            };
            Some((p.agent_id.clone(), entry))
        })
        .collect()
}

/// Makes the table's roster entries those of `roster`; mDNS and static
/// entries are left alone.
pub fn apply_roster(peers: &PeerTable, self_id: &str, roster: &pb::Roster) -> Synced {
    peers.sync_source(Source::Roster, roster_entries(self_id, roster))
}

/// `ip:port` with a specific address and a non-zero port.
fn usable_addr(a: &str) -> bool {
    a.parse::<SocketAddr>()
        .is_ok_and(|sa| !sa.ip().is_unspecified() && sa.port() != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: &str, addrs: &[&str]) -> pb::RosterPeer {
        pb::RosterPeer {
            agent_id: id.into(),
            addrs: addrs.iter().map(|a| (*a).to_owned()).collect(),
            cert_fingerprint: format!("fp-{id}"),
            groups: vec!["lab".into()],
        }
    }

    #[test]
    fn deny_list_is_config_plus_revocations() {
        let configured = vec!["old-laptop".to_owned(), "0a1b".to_owned()];
        let r = pb::Revocations {
            serials: vec!["0A:FF".into(), "0a1b".into(), " ".into()],
            agent_ids: vec!["lab-3".into(), "old-laptop".into()],
        };
        let got: Vec<String> = deny_entries(&configured, &r).into_iter().collect();
        assert_eq!(got, vec!["0a1b", "0aff", "lab-3", "old-laptop"]);

        let deny = DenyList::new(configured.clone());
        let id = |agent_id: &str, serial: &str| shoal_proto::identity::Identity {
            agent_id: agent_id.into(),
            groups: Vec::new(),
            roles: Vec::new(),
            serial: serial.into(),
            not_before_unix: 0,
            not_after_unix: 0,
            fingerprint: String::new(),
        };
        apply_revocations(&deny, &configured, &r);
        assert!(deny.denies(&id("lab-3", "01")));
        assert!(deny.denies(&id("lab-9", "0aff")), "by serial");
        assert!(deny.denies(&id("old-laptop", "02")), "config kept");
        // A later, shorter list un-revokes, but never drops config entries.
        apply_revocations(&deny, &configured, &pb::Revocations::default());
        assert!(!deny.denies(&id("lab-3", "01")));
        assert!(deny.denies(&id("old-laptop", "02")));
    }

    #[test]
    fn roster_entries_skip_self_and_unusable_peers() {
        let roster = pb::Roster {
            peers: vec![
                peer("me", &["10.0.0.1:7400"]),
                peer("a", &["10.0.0.2:7400", "lab-a:7400", "0.0.0.0:7400"]),
                peer("b", &["10.0.0.3:0"]),
                peer("Bad Id", &["10.0.0.4:7400"]),
                peer("c", &["[fd00::5]:7400"]),
            ],
        };
        let got = roster_entries("me", &roster);
        let keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, vec!["a", "c"]);
        let (_, a) = &got[0];
        assert_eq!(a.addrs, vec!["10.0.0.2:7400"]);
        assert_eq!(a.fingerprint.as_deref(), Some("fp-a"));
        assert_eq!(a.source, Source::Roster);
    }

    #[test]
    fn roster_diff_adds_refreshes_and_drops() {
        let table = PeerTable::new("me");
        let r1 = pb::Roster {
            peers: vec![peer("a", &["10.0.0.2:7400"]), peer("b", &["10.0.0.3:7400"])],
        };
        let s = apply_roster(&table, "me", &r1);
        assert_eq!((s.listed, s.added, s.removed), (2, 2, 0));
        let r2 = pb::Roster {
            peers: vec![
                peer("b", &["10.0.0.33:7400"]),
                peer("c", &["10.0.0.4:7400"]),
            ],
        };
        let s = apply_roster(&table, "me", &r2);
        assert_eq!((s.listed, s.added, s.removed), (2, 1, 1));
        let snap = table.snapshot();
        assert_eq!(snap.keys().collect::<Vec<_>>(), vec!["b", "c"]);
        assert_eq!(snap["b"].addrs, vec!["10.0.0.33:7400"]);
    }
}

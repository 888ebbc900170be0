//! mDNS discovery: advertise `_shoal._tcp.local.` with the agent id, port
//! and certificate fingerprint, and browse for other agents.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};
use tokio_util::sync::CancellationToken;

use super::{PeerEntry, PeerTable, Source};

/// The DNS-SD service type Shoal agents advertise.
pub const SERVICE_TYPE: &str = "_shoal._tcp.local.";

/// Why mDNS could not start.
#[derive(Debug, thiserror::Error)]
#[error("mDNS: {0}")]
pub struct MdnsError(String);

/// What this agent announces.
#[derive(Debug, Clone)]
pub struct Announcement {
    pub agent_id: String,
    pub port: u16,
    /// Addresses to announce; empty = every address of the host, kept up
    /// to date as interfaces change.
    pub addrs: Vec<IpAddr>,
    pub fingerprint: String,
}

/// Starts advertising and browsing; returns the daemon to shut down.
pub fn start(
    ann: &Announcement,
) -> Result<(ServiceDaemon, mdns_sd::Receiver<ServiceEvent>), MdnsError> {
    let daemon = ServiceDaemon::new().map_err(|e| MdnsError(e.to_string()))?;
    let props = [
        ("id", ann.agent_id.as_str()),
        ("fp", ann.fingerprint.as_str()),
        ("v", "1"),
    ];
    let host = format!("{}.local.", ann.agent_id);
    let info = if ann.addrs.is_empty() {
        ServiceInfo::new(SERVICE_TYPE, &ann.agent_id, &host, "", ann.port, &props[..])
            .map(ServiceInfo::enable_addr_auto)
    } else {
        ServiceInfo::new(
            SERVICE_TYPE,
            &ann.agent_id,
            &host,
            &ann.addrs[..],
            ann.port,
            &props[..],
        )
    }
    .map_err(|e| MdnsError(e.to_string()))?;
    daemon
        .register(info)
        .map_err(|e| MdnsError(e.to_string()))?;
    let events = daemon
        .browse(SERVICE_TYPE)
        .map_err(|e| MdnsError(e.to_string()))?;
    Ok((daemon, events))
}

/// Feeds browse results into the peer table until cancelled, then
/// unregisters and shuts the daemon down.
pub async fn browse_task(
    daemon: ServiceDaemon,
    events: mdns_sd::Receiver<ServiceEvent>,
    table: Arc<PeerTable>,
    cancel: CancellationToken,
) {
    // fullname -> agent id, to map removals.
    let mut names: HashMap<String, String> = HashMap::new();
    loop {
        let ev = tokio::select! {
            _ = cancel.cancelled() => break,
            ev = events.recv_async() => match ev {
                Ok(ev) => ev,
                Err(_) => break,
            },
        };
        match ev {
            ServiceEvent::ServiceResolved(info) => {
                let Some(id) = info.get_property_val_str("id").map(str::to_owned) else {
                    tracing::debug!(service = %info.fullname, "mDNS service without an agent id; ignored");
                    continue;
                };
                if shoal_proto::identity::validate_label("agent id", &id).is_err() {
                    continue;
                }
                let mut addrs: Vec<IpAddr> = info
                    .get_addresses()
                    .iter()
                    .map(|a| a.to_ip_addr())
                    .collect();
                // IPv4 first, then IPv6; stable order.
                addrs.sort_by_key(|a| (a.is_ipv6(), *a));
                let addrs: Vec<String> = addrs
                    .iter()
                    .map(|a| std::net::SocketAddr::new(*a, info.port).to_string())
                    .collect();
                if addrs.is_empty() {
                    continue;
                }
                tracing::debug!(peer = %id, ?addrs, "mDNS resolved a peer");
                names.insert(info.fullname.clone(), id.clone());
                table.upsert(
                    id.clone(),
                    PeerEntry {
                        agent_id: Some(id),
                        addrs,
                        source: Source::Mdns,
                        fingerprint: info.get_property_val_str("fp").map(str::to_owned),
                        last_seen: Instant::now(),
                    },
                );
            }
            ServiceEvent::ServiceRemoved(_, fullname) => {
                if let Some(id) = names.remove(&fullname) {
                    tracing::info!(peer = %id, "mDNS: peer left");
                    table.remove(&id);
                }
            }
            _ => {}
        }
    }
    if let Ok(rx) = daemon.shutdown() {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), rx.recv_async()).await;
    }
}

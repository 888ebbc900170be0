//! Connections to peers, dialled once and shared by every transfer.

use std::collections::HashMap;
use std::sync::Mutex;

use shoal_proto::identity::Identity;
use shoal_proto::pb::swarm_client::SwarmClient;
use tonic::transport::Channel;

use crate::discovery::PeerEntry;
use crate::transport::client::{ConnectError, Connector};
use crate::transport::tls::DenyList;

/// A connected peer.
#[derive(Debug, Clone)]
pub struct PeerConn {
    pub identity: Identity,
    pub addr: String,
    pub client: SwarmClient<Channel>,
}

/// Cached connections by address.
#[derive(Debug)]
pub struct PeerPool {
    connector: Connector,
    conns: Mutex<HashMap<String, PeerConn>>,
}

impl PeerPool {
    pub fn new(connector: Connector) -> Self {
        Self {
            connector,
            conns: Mutex::new(HashMap::new()),
        }
    }

    /// A connection to the peer, trying its addresses in order.
    pub async fn connect(&self, entry: &PeerEntry) -> Result<PeerConn, ConnectError> {
        let mut last = None;
        for addr in &entry.addrs {
            if let Some(c) = self
                .conns
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(addr)
            {
                return Ok(c.clone());
            }
            match self
                .connector
                .connect(addr, entry.agent_id.as_deref())
                .await
            {
                Ok((channel, identity)) => {
                    let client = SwarmClient::new(channel)
                        .max_decoding_message_size(crate::transport::MAX_MESSAGE)
                        .max_encoding_message_size(crate::transport::MAX_MESSAGE);
                    let conn = PeerConn {
                        identity,
                        addr: addr.clone(),
                        client,
                    };
                    self.conns
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(addr.clone(), conn.clone());
                    return Ok(conn);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ConnectError::Transport {
            addr: "(none)".into(),
            cause: "peer has no address".into(),
        }))
    }

    /// Drops a cached connection after it failed.
    pub fn forget(&self, addr: &str) {
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(addr);
    }

    /// Drops cached connections to peers the deny list now refuses; returns
    /// how many. Transfers already holding one may use it until they next
    /// dial; that dial is refused in the handshake.
    pub fn forget_denied(&self, deny: &DenyList) -> usize {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let before = conns.len();
        conns.retain(|_, c| !deny.denies(&c.identity));
        before - conns.len()
    }

    /// How many distinct peers have a cached connection.
    pub fn connected_peers(&self) -> usize {
        let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let ids: std::collections::HashSet<&str> = conns
            .values()
            .map(|c| c.identity.agent_id.as_str())
            .collect();
        ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(agent_id: &str, serial: &str, addr: &str) -> PeerConn {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect_lazy();
        PeerConn {
            identity: Identity {
                agent_id: agent_id.into(),
                groups: Vec::new(),
                roles: Vec::new(),
                serial: serial.into(),
                not_before_unix: 0,
                not_after_unix: 0,
                fingerprint: String::new(),
            },
            addr: addr.into(),
            client: SwarmClient::new(channel),
        }
    }

    #[tokio::test]
    async fn forget_denied_drops_only_denied_peers() {
        let config = rustls::ClientConfig::builder_with_provider(crate::transport::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let pool = PeerPool::new(Connector::new(std::sync::Arc::new(config)));
        for c in [
            conn("a", "01", "10.0.0.1:7400"),
            conn("a", "01", "10.0.1.1:7400"),
            conn("b", "02", "10.0.0.2:7400"),
            conn("c", "03", "10.0.0.3:7400"),
        ] {
            pool.conns.lock().expect("lock").insert(c.addr.clone(), c);
        }
        assert_eq!(pool.connected_peers(), 3);
        let deny = DenyList::new(["a".to_owned(), "03".to_owned()]);
        assert_eq!(pool.forget_denied(&deny), 3);
        assert_eq!(pool.connected_peers(), 1);
    }
}

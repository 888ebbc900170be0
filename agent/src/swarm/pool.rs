//! Connections to peers, dialled once and shared by every transfer.

use std::collections::HashMap;
use std::sync::Mutex;

use shoal_proto::identity::Identity;
use shoal_proto::pb::swarm_client::SwarmClient;
use tonic::transport::Channel;

use crate::discovery::PeerEntry;
use crate::transport::client::{ConnectError, Connector};

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
}

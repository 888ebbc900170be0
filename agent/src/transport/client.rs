//! Dialling peers over mTLS and learning who answered.

use std::sync::{Arc, Mutex};

use hyper_util::rt::TokioIo;
use shoal_proto::identity::{Identity, parse_identity};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use super::{
    CONNECT_TIMEOUT, CONNECTION_WINDOW, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, MAX_FRAME,
    STREAM_WINDOW, tls,
};

/// Why a peer could not be reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    #[error("connecting to {addr}: {cause}")]
    Transport { addr: String, cause: String },
    #[error("{addr} presented no usable identity")]
    NoIdentity { addr: String },
}

/// Dials peers with this agent's client configuration.
#[derive(Debug, Clone)]
pub struct Connector {
    config: Arc<rustls::ClientConfig>,
}

impl Connector {
    pub fn new(config: Arc<rustls::ClientConfig>) -> Self {
        Self { config }
    }

    /// Connects to `addr` (`host:port`). With `expected`, the peer must be
    /// that agent. Returns a gRPC channel and the peer's identity.
    pub async fn connect(
        &self,
        addr: &str,
        expected: Option<&str>,
    ) -> Result<(Channel, Identity), ConnectError> {
        let err = |cause: String| ConnectError::Transport {
            addr: addr.to_owned(),
            cause,
        };
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| err(e.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let seen: Arc<Mutex<Option<Identity>>> = Arc::default();
        let connector = TlsConnector::from(self.config.clone());
        let name = tls::server_name_for(expected);
        let target = addr.to_owned();
        let slot = seen.clone();
        let channel = endpoint
            .connect_with_connector(tower::service_fn(move |_uri| {
                let (connector, name, target, slot) = (
                    connector.clone(),
                    name.clone(),
                    target.clone(),
                    slot.clone(),
                );
                async move {
                    let tcp = TcpStream::connect(&target).await?;
                    tcp.set_nodelay(true)?;
                    let tls = connector.connect(name, tcp).await?;
                    let id = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| parse_identity(c).ok());
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = id;
                    Ok::<_, std::io::Error>(TokioIo::new(tls))
                }
            }))
            .await
            .map_err(|e| err(error_chain(&e)))?;
        let id = seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| ConnectError::NoIdentity {
                addr: addr.to_owned(),
            })?;
        Ok((channel, id))
    }
}

/// An error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

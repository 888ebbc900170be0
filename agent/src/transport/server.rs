//! The TLS accept loop in front of tonic.
//!
//! Handshakes run in their own tracked tasks with a timeout, so one slow
//! client never blocks others; verified connections go to tonic through a
//! bounded channel, which keeps `Request::peer_certs()` working. Refused
//! handshakes are logged here: the client only sees a closed connection.

use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::HANDSHAKE_TIMEOUT;

/// Connections accepted but not yet picked up by tonic.
const ACCEPT_BACKLOG: usize = 64;

/// A stream of verified TLS connections for `serve_with_incoming`. Ends
/// when `shutdown` fires. Tasks are spawned on `tracker`.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(ACCEPT_BACKLOG);
    let acceptor = TlsAcceptor::from(config);
    let handshakes = tracker.clone();
    tracker.spawn(async move {
        loop {
            let (tcp, addr) = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let shutdown = shutdown.clone();
            handshakes.spawn(async move {
                let hs = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                let stream = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = hs => r,
                };
                match stream {
                    Ok(Ok(s)) => {
                        let _ = tx.send(Ok(s)).await;
                    }
                    // Closed before a word: a reachability probe (discovery
                    // ages peers out with a bare TCP connect) or a port scan.
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        tracing::debug!(peer = %addr, "connection closed before a TLS handshake")
                    }
                    Ok(Err(e)) => tracing::warn!(peer = %addr, "TLS handshake refused: {e}"),
                    Err(_) => tracing::warn!(peer = %addr, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

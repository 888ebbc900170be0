//! Transport: every agent-to-agent connection is TLS 1.3 with client
//! certificates from the fleet CA, carrying gRPC (tonic) over HTTP/2.
//!
//! [`tls`] builds the rustls configurations and verifiers, [`live_cert`]
//! holds the agent's own certificate so a renewal takes effect without a
//! restart, [`server`] runs
//! the accept loop that hands verified connections to tonic, [`client`]
//! dials peers and learns who answered, [`identities`] remembers what the
//! certificates of callers say.

pub mod client;
pub mod identities;
pub mod live_cert;
pub mod server;
pub mod tls;

use std::time::Duration;

/// HTTP/2 flow-control windows. The stream window bounds what a serving
/// peer has queued towards us per response (in its buffers, its socket,
/// the network): small, so that a response whose last frame HTTP/2 took is
/// nearly delivered and the sender's upload slot means what it says (see
/// the swarm service). Per-stream throughput is the window over the round
/// trip: 256 KiB covers a LAN's sub-millisecond RTT many times, and a
/// queue that a window-limited sender builds itself. The connection window
/// covers several streams at once.
pub const STREAM_WINDOW: u32 = 256 << 10;
pub const CONNECTION_WINDOW: u32 = 8 << 20;
/// Largest HTTP/2 frame either side accepts. HTTP/2's 16 KiB default made
/// the sender write every 16 KiB DATA frame as its own TLS record and
/// `writev`; with frames up to the stream window one write carries a
/// window's worth of records.
pub const MAX_FRAME: u32 = 1 << 20;
/// Largest gRPC message accepted: a chunk frame plus headroom.
pub const MAX_MESSAGE: usize = 4 << 20;
/// A TLS handshake that takes longer than this is dropped, so a slow or
/// hostile client cannot hold an accept slot.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Dialling a peer gives up after this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 keep-alive pings find dead peers on idle connections.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

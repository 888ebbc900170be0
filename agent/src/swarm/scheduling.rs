//! The download's peer-side decisions, as plain functions the download
//! actor ([`super::download`]) and the fleet simulation share: how many
//! requests a peer may have in flight, which peers are asked first, and
//! the batch and in-flight limits. Piece choice is [`super::picker`].

use std::cmp::Ordering;
use std::time::Duration;

/// Bytes asked of a peer in one request: large enough to amortise the
/// round trip, small enough that a stalled peer holds little hostage.
pub const BATCH_BYTES: u64 = 4 << 20;
/// Chunks per request at most (many small files).
pub const BATCH_CHUNKS: usize = 64;
/// A peer is kept busy with about this much data in flight (its measured
/// throughput times this), so a slow or shared peer is not asked for more
/// than it can send soon: otherwise every agent queues the same chunks at
/// the seed at once and the seed uploads many copies.
pub const PIPELINE_SECONDS: f64 = 0.5;
/// After a "busy" answer, leave the peer alone this long, twice as long
/// after each further one, up to [`BUSY_BACKOFF_MAX`].
pub const BUSY_BACKOFF: Duration = Duration::from_millis(300);
/// Longest back-off after repeated "busy" answers.
pub const BUSY_BACKOFF_MAX: Duration = Duration::from_millis(2400);

/// How long to leave a peer alone after its `streak + 1`-th "busy" in a
/// row (the streak ends with the next chunk it sends).
pub fn busy_backoff(streak: u32) -> Duration {
    (BUSY_BACKOFF * 2u32.pow(streak.min(8))).min(BUSY_BACKOFF_MAX)
}
/// Bytes of chunk requests in flight per download, across all peers.
/// Chunks stream to disk, so this costs no memory. It must cover several
/// peers' worth of slow streams (a peer splits its upload among its
/// slots), or the download idles; more than that only oversubscribes the
/// swarm's upload slots: with 64 MiB, 30 agents asked for about twice the
/// slots there were, most peers answered "busy" most of the time, slots
/// went to whoever asked again first, and the last host finished 20 s
/// after the first (1 GiB); with 32 MiB, 8 s, and 1.06 seed copies
/// instead of 1.15.
pub const MAX_INFLIGHT_BYTES: u64 = 32 << 20;
/// Requests in flight per download, across all peers. With small files a
/// request carries a few small chunks, so [`MAX_INFLIGHT_BYTES`] alone let
/// a download hold dozens of requests: in a 30-host course run (1,250
/// files) 64 % of all requests found the peer's upload slots full and came
/// back "busy", each a wasted round trip on both ends. 31 agents with 8
/// slots each have about 8 slots per downloader.
pub const MAX_INFLIGHT_REQUESTS: usize = 12;

/// Requests a peer may have in flight: none while it is backing off, one
/// until it has shown its speed, then enough to cover
/// [`PIPELINE_SECONDS`] of its throughput (bytes per second), at most `max`.
pub fn window(throughput: f64, idle: bool, max: usize) -> usize {
    if idle {
        return 0;
    }
    let want = (throughput * PIPELINE_SECONDS / BATCH_BYTES as f64).ceil() as usize + 1;
    want.clamp(1, max)
}

/// What peer order looks at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeerRank {
    pub origin: bool,
    pub same_subnet: bool,
    pub throughput: f64,
}

/// Who is asked first: peers before the origin (its upload is the scarce
/// one), then peers on our subnet, then the fastest recently.
pub fn peer_order(a: &PeerRank, b: &PeerRank) -> Ordering {
    a.origin
        .cmp(&b.origin)
        .then(b.same_subnet.cmp(&a.same_subnet))
        .then(b.throughput.total_cmp(&a.throughput))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_follow_throughput() {
        assert_eq!(window(0.0, false, 4), 1);
        assert_eq!(window(1e9, true, 4), 0);
        // 12.5 MB/s (100 Mbit/s): 0.5 s is 6.25 MB, two 4 MiB requests.
        assert_eq!(window(12.5e6, false, 4), 3);
        assert_eq!(window(1e9, false, 4), 4);
    }

    #[test]
    fn busy_backoff_doubles_to_its_cap() {
        assert_eq!(busy_backoff(0), BUSY_BACKOFF);
        assert_eq!(busy_backoff(1), BUSY_BACKOFF * 2);
        assert_eq!(busy_backoff(3), BUSY_BACKOFF_MAX);
        assert_eq!(busy_backoff(40), BUSY_BACKOFF_MAX);
    }

    #[test]
    fn origin_last_then_subnet_then_speed() {
        let r = |origin, same_subnet, throughput| PeerRank {
            origin,
            same_subnet,
            throughput,
        };
        let mut v = [
            r(true, true, 9.0),
            r(false, false, 5.0),
            r(false, true, 1.0),
            r(false, true, 3.0),
        ];
        v.sort_by(peer_order);
        assert_eq!(
            v,
            [
                r(false, true, 3.0),
                r(false, true, 1.0),
                r(false, false, 5.0),
                r(true, true, 9.0)
            ]
        );
    }
}

//! When a download's bitfield goes to the state database.
//!
//! A save is a write to sled's log; the agent's save clock makes it durable
//! (one flush, an `fsync`) on its next tick. In a 30-host run at 100 Mbit/s,
//! saving four times a second per agent, with sled flushing five times a
//! second (an `fsync` each, written to or not), was 2.4 % of the machine's
//! CPU for a few hundred bytes of state. So a bitfield is saved once it
//! holds [`save_bytes`] of unsaved chunks (1/32 of the package, at most
//! [`SAVE_BYTES`]), but not more often than every [`SAVE_MIN_INTERVAL`];
//! or [`SAVE_MAX_INTERVAL`] after its first unsaved chunk; or when the
//! download completes. A crash loses at most that much (plus one tick of
//! the clock) of verified chunks; they are fetched again. A 1 GiB package
//! at 100 Mbit/s saves about every 1.4 s.

use std::time::{Duration, Instant};

/// Unsaved chunk bytes that make a save of a large package due.
pub const SAVE_BYTES: u64 = 16 << 20;
/// Saves of one bitfield are at least this far apart (but the last).
pub const SAVE_MIN_INTERVAL: Duration = Duration::from_millis(250);
/// An unsaved chunk waits at most about this long (plus one tick of the
/// agent's save clock, which runs every [`SAVE_MIN_INTERVAL`]).
pub const SAVE_MAX_INTERVAL: Duration = Duration::from_secs(2);

/// Unsaved chunk bytes that make a save of a package of `total` bytes
/// due: a 32nd of it, at most [`SAVE_BYTES`].
pub fn save_bytes(total: u64) -> u64 {
    (total / 32).min(SAVE_BYTES)
}

/// What one bitfield has not saved yet.
#[derive(Debug)]
pub struct Unsaved {
    /// [`save_bytes`] of the package.
    threshold: u64,
    bytes: u64,
    /// When the first unsaved chunk came, if any is unsaved.
    since: Option<Instant>,
    last_save: Instant,
}

impl Unsaved {
    /// Nothing unsaved yet, for a package of `total` bytes.
    pub fn new(total: u64) -> Self {
        Self {
            threshold: save_bytes(total),
            bytes: 0,
            since: None,
            last_save: Instant::now(),
        }
    }

    /// Counts a newly held chunk of `len` bytes.
    pub fn add(&mut self, len: u64, now: Instant) {
        self.bytes += len;
        self.since.get_or_insert(now);
    }

    pub fn is_dirty(&self) -> bool {
        self.since.is_some()
    }

    /// Whether a save is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        let Some(since) = self.since else {
            return false;
        };
        now.duration_since(since) >= SAVE_MAX_INTERVAL
            || (self.bytes >= self.threshold
                && now.duration_since(self.last_save) >= SAVE_MIN_INTERVAL)
    }

    /// Records a save at `now`.
    pub fn saved(&mut self, now: Instant) {
        self.bytes = 0;
        self.since = None;
        self.last_save = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_save_waits_for_enough_bytes_or_long_enough() {
        let t0 = Instant::now();
        let mut u = Unsaved::new(1 << 30);
        assert_eq!(save_bytes(1 << 30), SAVE_BYTES);
        assert_eq!(save_bytes(64 << 20), 2 << 20);
        assert!(!u.is_dirty() && !u.due(t0 + SAVE_MAX_INTERVAL * 10));

        // A little, recently: not yet; after the longest wait: due.
        u.add(1 << 20, t0);
        assert!(u.is_dirty());
        assert!(!u.due(t0 + SAVE_MIN_INTERVAL * 2));
        assert!(u.due(t0 + SAVE_MAX_INTERVAL));

        // Enough bytes: due once the shortest interval since the last
        // save has passed, not before.
        u.saved(t0);
        u.add(SAVE_BYTES, t0 + Duration::from_millis(10));
        assert!(!u.due(t0 + Duration::from_millis(100)));
        assert!(u.due(t0 + SAVE_MIN_INTERVAL));

        u.saved(t0 + SAVE_MIN_INTERVAL);
        assert!(!u.is_dirty() && !u.due(t0 + SAVE_MAX_INTERVAL * 10));
    }
}

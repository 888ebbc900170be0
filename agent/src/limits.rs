//! Bandwidth and concurrency limits: token-bucket rate limiters whose rate
//! can change at run time, shared by every transfer of the agent.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Burst allowance: how far ahead of the rate a sender may run. 100 ms of
/// traffic (at least 256 KiB) smooths per-frame jitter without letting a
/// limited agent flood the link in bursts.
const BURST_SECONDS: f64 = 0.1;
const MIN_BURST: f64 = 256.0 * 1024.0;

#[derive(Debug)]
struct Bucket {
    /// Bytes per second; 0 = unlimited.
    rate: u64,
    /// May go negative: a large request borrows and its sender waits the
    /// debt off, so requests bigger than the burst still work.
    tokens: f64,
    last: Instant,
}

/// A byte-rate limiter. `acquire(n)` returns once sending `n` bytes keeps
/// the long-run rate at or under the configured one.
#[derive(Debug)]
pub struct RateLimiter {
    bucket: Mutex<Bucket>,
    waited_ns: AtomicU64,
}

impl RateLimiter {
    pub fn new(rate: u64) -> Self {
        Self {
            bucket: Mutex::new(Bucket {
                rate,
                tokens: burst(rate),
                last: Instant::now(),
            }),
            waited_ns: AtomicU64::new(0),
        }
    }

    /// Current rate in bytes per second (0 = unlimited).
    pub fn rate(&self) -> u64 {
        self.lock().rate
    }

    /// Changes the rate; takes effect for the next `acquire`.
    pub fn set_rate(&self, rate: u64) {
        let mut b = self.lock();
        b.rate = rate;
        b.tokens = b.tokens.min(burst(rate));
    }

    /// Total time callers have spent waiting, for metrics.
    pub fn waited(&self) -> Duration {
        Duration::from_nanos(self.waited_ns.load(Ordering::Relaxed))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bucket> {
        // A panic while holding this lock cannot leave the bucket
        // inconsistent (plain numbers), so poisoning is ignored.
        self.bucket.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `bytes` may be sent.
    pub async fn acquire(&self, bytes: u64) {
        let wait = {
            let mut b = self.lock();
            if b.rate == 0 {
                return;
            }
            let now = Instant::now();
            let rate = b.rate as f64;
            let elapsed = now.duration_since(b.last).as_secs_f64();
            b.last = now;
            b.tokens = (b.tokens + elapsed * rate).min(burst(b.rate));
            b.tokens -= bytes as f64;
            if b.tokens >= 0.0 {
                return;
            }
            Duration::from_secs_f64(-b.tokens / rate)
        };
        self.waited_ns
            .fetch_add(wait.as_nanos() as u64, Ordering::Relaxed);
        tokio::time::sleep(wait).await;
    }
}

fn burst(rate: u64) -> f64 {
    (rate as f64 * BURST_SECONDS).max(MIN_BURST)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn holds_the_rate() {
        let l = RateLimiter::new(1_000_000);
        let start = tokio::time::Instant::now();
        for _ in 0..50 {
            l.acquire(100_000).await;
        }
        // 5 MB at 1 MB/s, minus the initial burst of 256 KiB.
        let secs = start.elapsed().as_secs_f64();
        assert!((4.6..=5.1).contains(&secs), "{secs}");
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_and_runtime_changes() {
        let l = RateLimiter::new(0);
        let start = tokio::time::Instant::now();
        l.acquire(1 << 30).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        l.set_rate(2_000_000);
        for _ in 0..40 {
            l.acquire(100_000).await;
        }
        let secs = start.elapsed().as_secs_f64();
        assert!((1.8..=2.1).contains(&secs), "{secs}");
        assert_eq!(l.rate(), 2_000_000);
    }
}

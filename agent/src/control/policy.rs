//! Applying the controller's policy: rate limits (with time-of-day
//! windows), concurrent downloads, cache quota and trusted publishers.
//!
//! A policy field of 0 (or an empty list) means the policy does not set it
//! and the agent's own configuration applies. Schedule windows are read
//! against UTC (the workspace has no time-zone database); they are
//! re-evaluated every minute, and rates are only set when the effective
//! value changes, so `shoal limits set` holds until the next change.
//!
//! Not applied yet: `upload_slots` (the upload semaphore is sized at start)
//! and `allowed_peer_groups` (the peer table does not carry groups); both
//! are logged when set.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_proto::pb;
use shoal_proto::signing::{PublicKey, TrustedKeys};

use crate::swarm::SwarmContext;
use crate::transfers::Transfers;

/// How often schedule windows are re-evaluated.
const CLOCK: Duration = Duration::from_secs(60);

/// What the agent's configuration says, for fields a policy leaves unset.
#[derive(Debug, Clone)]
pub struct Baseline {
    pub upload_rate: u64,
    pub download_rate: u64,
    pub max_concurrent_downloads: u32,
    pub cache_quota: u64,
    pub trusted: TrustedKeys,
}

/// ISO weekday (1 = Monday) and minute of the day, in UTC, of `unix_secs`.
pub fn utc_weekday_minute(unix_secs: u64) -> (u32, u32) {
    let days = unix_secs / 86_400;
    // 1970-01-01 was a Thursday (ISO 4).
    let weekday = ((days + 3) % 7) as u32 + 1;
    let minute = ((unix_secs % 86_400) / 60) as u32;
    (weekday, minute)
}

fn window_active(w: &pb::RateWindow, weekday: u32, minute: u32) -> bool {
    let day_ok = w.weekdays.is_empty() || w.weekdays.contains(&weekday);
    let time_ok = if w.start_minute <= w.end_minute {
        (w.start_minute..w.end_minute).contains(&minute)
    } else {
        minute >= w.start_minute || minute < w.end_minute
    };
    day_ok && time_ok
}

/// The policy's (upload, download) rates at a time: the first active
/// window's, where it sets them, else the policy's own; 0 = not set.
pub fn policy_rates(p: &pb::Policy, weekday: u32, minute: u32) -> (u64, u64) {
    let (mut up, mut down) = (p.upload_rate, p.download_rate);
    if let Some(w) = p
        .schedule
        .iter()
        .find(|w| window_active(w, weekday, minute))
    {
        if w.upload_rate != 0 {
            up = w.upload_rate;
        }
        if w.download_rate != 0 {
            down = w.download_rate;
        }
    }
    (up, down)
}

fn or(v: u64, base: u64) -> u64 {
    if v == 0 { base } else { v }
}

/// Holds the policy in force and applies it to the running agent.
#[derive(Debug)]
pub struct PolicyApplier {
    ctx: Arc<SwarmContext>,
    transfers: Transfers,
    baseline: Baseline,
    current: Mutex<Option<pb::Policy>>,
    /// Last values set, so unchanged ones are not set again.
    applied: Mutex<Applied>,
}

#[derive(Debug, Default)]
struct Applied {
    rates: Option<(u64, u64)>,
    max_downloads: Option<u32>,
}

impl PolicyApplier {
    pub fn new(ctx: Arc<SwarmContext>, transfers: Transfers, baseline: Baseline) -> Self {
        Self {
            ctx,
            transfers,
            baseline,
            current: Mutex::new(None),
            applied: Mutex::default(),
        }
    }

    /// Version of the policy in force; 0 = none.
    pub fn version(&self) -> u64 {
        self.lock_current().as_ref().map_or(0, |p| p.version)
    }

    fn lock_current(&self) -> std::sync::MutexGuard<'_, Option<pb::Policy>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_applied(&self) -> std::sync::MutexGuard<'_, Applied> {
        self.applied.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `p` the policy in force.
    pub async fn apply(&self, p: pb::Policy) {
        let b = &self.baseline;
        self.ctx
            .store
            .set_quota(or(p.cache_quota_bytes, b.cache_quota));
        let mut trusted = b.trusted.clone();
        for k in &p.trusted_publishers {
            match k.parse::<PublicKey>() {
                Ok(key) => trusted.insert(key),
                Err(e) => tracing::warn!("policy trusted publisher ignored: {e}"),
            }
        }
        *self.ctx.trusted.write().unwrap_or_else(|e| e.into_inner()) = trusted;
        let max = if p.max_concurrent_downloads == 0 {
            b.max_concurrent_downloads
        } else {
            p.max_concurrent_downloads
        };
        let changed = {
            let mut a = self.lock_applied();
            let changed = a.max_downloads != Some(max);
            a.max_downloads = Some(max);
            changed
        };
        if changed && max > 0 {
            self.transfers.set_max_concurrent(max).await;
        }
        if p.upload_slots != 0 || !p.allowed_peer_groups.is_empty() {
            tracing::info!(
                upload_slots = p.upload_slots,
                allowed_peer_groups = ?p.allowed_peer_groups,
                "policy upload_slots and allowed_peer_groups are not applied by this agent version"
            );
        }
        tracing::info!(
            version = p.version,
            cache_quota = self.ctx.store.quota(),
            max_downloads = max,
            trusted_publishers = p.trusted_publishers.len(),
            "controller policy applied"
        );
        *self.lock_current() = Some(p);
        self.refresh_rates();
    }

    /// Sets the rates the policy calls for now, if they changed.
    pub fn refresh_rates(&self) {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (weekday, minute) = utc_weekday_minute(secs);
        let (up, down) = match self.lock_current().as_ref() {
            Some(p) => policy_rates(p, weekday, minute),
            None => (0, 0),
        };
        let rates = (
            or(up, self.baseline.upload_rate),
            or(down, self.baseline.download_rate),
        );
        let mut a = self.lock_applied();
        if a.rates != Some(rates) {
            self.ctx.upload_limit.set_rate(rates.0);
            self.ctx.download_limit.set_rate(rates.1);
            tracing::info!(
                upload = rates.0,
                download = rates.1,
                "rate limits set by policy"
            );
            a.rates = Some(rates);
        }
    }

    /// Re-evaluates the schedule every minute until the agent stops.
    pub fn spawn_clock(self: &Arc<Self>) {
        let this = self.clone();
        let cancel = self.ctx.cancel.clone();
        self.ctx.tasks.spawn(async move {
            let mut tick = tokio::time::interval(CLOCK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => this.refresh_rates(),
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(start: u32, end: u32, days: &[u32], up: u64) -> pb::RateWindow {
        pb::RateWindow {
            start_minute: start,
            end_minute: end,
            weekdays: days.to_vec(),
            upload_rate: up,
            download_rate: 0,
        }
    }

    #[test]
    fn utc_calendar() {
        // 1970-01-01 00:00 was a Thursday.
        assert_eq!(utc_weekday_minute(0), (4, 0));
        // 2024-01-01 (a Monday) 08:30 UTC.
        assert_eq!(utc_weekday_minute(1_704_097_800), (1, 510));
        // 2024-01-07 (a Sunday) 23:59.
        assert_eq!(utc_weekday_minute(1_704_671_940), (7, 1439));
    }

    #[test]
    fn windows_override_the_base_rates() {
        let p = pb::Policy {
            upload_rate: 100,
            download_rate: 200,
            schedule: vec![
                window(8 * 60, 18 * 60, &[1, 2, 3, 4, 5], 10),
                window(22 * 60, 6 * 60, &[], 1000),
            ],
            ..Default::default()
        };
        assert_eq!(policy_rates(&p, 1, 9 * 60), (10, 200), "weekday, in window");
        assert_eq!(policy_rates(&p, 6, 9 * 60), (100, 200), "saturday");
        assert_eq!(policy_rates(&p, 1, 18 * 60), (100, 200), "end is exclusive");
        assert_eq!(policy_rates(&p, 3, 23 * 60), (1000, 200), "wraps midnight");
        assert_eq!(policy_rates(&p, 3, 5 * 60), (1000, 200));
    }
}

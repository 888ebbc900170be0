//! The controller's Prometheus metrics (names in `docs/metrics.md`).
//!
//! Fleet, policy and rollout figures are read from state at scrape time;
//! events (enrollments, revocations, status reports, admin calls) are
//! counted where they happen. The registry belongs to the controller, not
//! the process. [`serve`] runs `/metrics` and `/healthz` as one of the
//! controller's tasks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use shoal_proto::pb::package_status::State as PkgState;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::rollout::{members, wave_of};
use crate::service::Shared;

pub use shoal_agent::metrics::MetricsError;

/// Admin call buckets: 1 ms to 10 s.
const ADMIN_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Every metric of the controller.
#[derive(Debug)]
pub struct ControllerMetrics {
    registry: Registry,
    pub enrollments: IntCounter,
    pub revocations: IntCounter,
    pub status_reports: IntCounter,
    admin: HistogramVec,
    enrolled: IntGaugeVec,
    online: IntGaugeVec,
    revoked: IntGauge,
    policy_version: IntGauge,
    group_policy: IntGaugeVec,
    rollout_agents: IntGaugeVec,
    rollout_wave: IntGaugeVec,
    fleet_received: IntGaugeVec,
    p2p: Gauge,
    cert_expiry_min: IntGauge,
}

use shoal_agent::metrics::register as reg;

fn gauge_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, prometheus::Error> {
    reg(r, IntGaugeVec::new(Opts::new(name, help), labels)?)
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl ControllerMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let r = &registry;
        let info = gauge_vec(
            r,
            "shoal_controller_info",
            "Build of this controller.",
            &["version"],
        )?;
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        Ok(Self {
            enrollments: reg(
                r,
                IntCounter::new(
                    "shoal_controller_enrollments_total",
                    "Agents enrolled since start.",
                )?,
            )?,
            revocations: reg(
                r,
                IntCounter::new(
                    "shoal_controller_revocations_total",
                    "Agents revoked since start.",
                )?,
            )?,
            status_reports: reg(
                r,
                IntCounter::new(
                    "shoal_controller_status_reports_total",
                    "Agent status reports processed.",
                )?,
            )?,
            admin: reg(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "shoal_controller_admin_request_duration_seconds",
                        "Admin calls, authorised, done and audited.",
                    )
                    .buckets(ADMIN_BUCKETS.to_vec()),
                    &["action", "outcome"],
                )?,
            )?,
            enrolled: gauge_vec(
                r,
                "shoal_controller_agents_enrolled",
                "Enrolled, unrevoked agents per group.",
                &["group"],
            )?,
            online: gauge_vec(
                r,
                "shoal_controller_agents_online",
                "Agents with an open session per group.",
                &["group"],
            )?,
            revoked: reg(
                r,
                IntGauge::new("shoal_controller_agents_revoked", "Revoked agents.")?,
            )?,
            policy_version: reg(
                r,
                IntGauge::new(
                    "shoal_controller_policy_version",
                    "The fleet's newest policy version.",
                )?,
            )?,
            group_policy: gauge_vec(
                r,
                "shoal_controller_group_policy_version",
                "Lowest policy version the group's online agents report.",
                &["group"],
            )?,
            rollout_agents: gauge_vec(
                r,
                "shoal_controller_rollout_agents",
                "Agents of each rollout by state.",
                &["package", "group", "state"],
            )?,
            rollout_wave: gauge_vec(
                r,
                "shoal_controller_rollout_wave",
                "Waves of each rollout released so far.",
                &["package", "group"],
            )?,
            fleet_received: gauge_vec(
                r,
                "shoal_controller_fleet_received_bytes",
                "Bytes the online agents report having received, summed, by source.",
                &["source"],
            )?,
            p2p: reg(
                r,
                Gauge::new(
                    "shoal_controller_p2p_ratio",
                    "Fleet bytes from peers divided by all bytes received.",
                )?,
            )?,
            cert_expiry_min: reg(
                r,
                IntGauge::new(
                    "shoal_controller_agent_certificate_expiry_min_timestamp_seconds",
                    "Earliest certificate expiry among enrolled, unrevoked agents, Unix time.",
                )?,
            )?,
            registry,
        })
    }

    pub fn admin_call(&self, action: &str, outcome: &str, took: Duration) {
        self.admin
            .with_label_values(&[action, outcome])
            .observe(took.as_secs_f64());
    }

    /// Reads the fleet, policy and rollouts in.
    fn refresh(&self, shared: &Shared) {
        let agents = match shared.state.agents() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("metrics: reading agents: {e}");
                return;
            }
        };
        let mut enrolled: BTreeMap<&str, i64> = BTreeMap::new();
        let mut online: BTreeMap<&str, i64> = BTreeMap::new();
        let mut group_policy: BTreeMap<&str, u64> = BTreeMap::new();
        let (mut revoked, mut from_peers, mut from_origin) = (0i64, 0u64, 0u64);
        let mut expiry_min: Option<i64> = None;
        for a in &agents {
            if a.revoked.is_some() {
                revoked += 1;
                continue;
            }
            if a.cert_expires_ms > 0 {
                let t = a.cert_expires_ms / 1000;
                expiry_min = Some(expiry_min.map_or(t, |m| m.min(t)));
            }
            let on = shared.fleet.get(&a.agent_id);
            if let Some(o) = &on {
                from_peers += o.bytes_from_peers;
                from_origin += o.bytes_from_origin;
            }
            for g in &a.groups {
                *enrolled.entry(g).or_default() += 1;
                let n = online.entry(g).or_default();
                if let Some(o) = &on {
                    *n += 1;
                    let v = group_policy.entry(g).or_insert(u64::MAX);
                    *v = (*v).min(o.policy_version);
                }
            }
        }
        self.enrolled.reset();
        self.online.reset();
        self.group_policy.reset();
        for (g, n) in &enrolled {
            self.enrolled.with_label_values(&[g]).set(*n);
            self.online
                .with_label_values(&[g])
                .set(online.get(g).copied().unwrap_or(0));
        }
        for (g, v) in &group_policy {
            self.group_policy.with_label_values(&[g]).set(clamp(*v));
        }
        self.revoked.set(revoked);
        self.policy_version
            .set(clamp(shared.state.policy_version().unwrap_or(0)));
        self.fleet_received
            .with_label_values(&["peer"])
            .set(clamp(from_peers));
        self.fleet_received
            .with_label_values(&["origin"])
            .set(clamp(from_origin));
        let all = from_peers + from_origin;
        self.p2p.set(if all == 0 {
            0.0
        } else {
            from_peers as f64 / all as f64
        });
        self.cert_expiry_min.set(expiry_min.unwrap_or(0));

        self.rollout_agents.reset();
        self.rollout_wave.reset();
        for r in shared.rollouts.all() {
            let progress = shared.rollouts.progress(&r.id);
            let m = members(&r, &agents);
            let mut counts = [0i64; 5];
            for (i, a) in m.iter().enumerate() {
                let state = progress.get(&a.agent_id).map_or(0, |p| p.state);
                let slot = if state == PkgState::Complete as i32 {
                    0
                } else if state == PkgState::Failed as i32 {
                    2
                } else if wave_of(&r.waves, m.len(), i) > r.released {
                    4
                } else if shared.fleet.get(&a.agent_id).is_none() {
                    3
                } else {
                    1
                };
                counts[slot] += 1;
            }
            for (state, n) in ["done", "active", "failed", "offline", "pending"]
                .iter()
                .zip(counts)
            {
                self.rollout_agents
                    .with_label_values(&[r.package.as_str(), r.group.as_str(), state])
                    .set(n);
            }
            self.rollout_wave
                .with_label_values(&[r.package.as_str(), r.group.as_str()])
                .set(i64::from(r.released));
        }
    }

    /// The text exposition, current.
    pub fn render(&self, shared: &Shared) -> String {
        self.refresh(shared);
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!("encoding metrics: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Serves the controller's metrics at `addr` (the agent crate's endpoint).
pub async fn serve(
    shared: Arc<Shared>,
    addr: SocketAddr,
    tasks: &TaskTracker,
    cancel: CancellationToken,
) -> Result<SocketAddr, MetricsError> {
    let render = Arc::new(move || shared.metrics.render(&shared));
    shoal_agent::metrics::serve_endpoint(render, addr, tasks, cancel).await
}

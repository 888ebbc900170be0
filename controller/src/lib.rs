//! The Shoal controller: enrollment CA, policies, quotas, ACLs, rollouts
//! and fleet metrics.
//!
//! Optional by design: agents keep distributing under the last policy they
//! received when it is down. The service is built on the wire contract in
//! `shoal-proto` (`AgentControl` and `Admin` services).
//!
//! - [`config`]: the YAML configuration, validated at load.
//! - [`state`]: everything the controller knows, in sled; a change is
//!   acknowledged only once it is on disk.
//! - [`ca`]: the fleet CA (created on first start, or imported), the
//!   controller's own certificate and the first admin identity.
//! - [`tokens`]: join tokens: groups, expiry, uses.
//! - [`rollout`]: assignments wave by wave, and where each agent stands.
//! - [`metrics`]: Prometheus metrics of the fleet, rollouts and admin calls.
//! - [`view`]: what sessions send, computed once per fleet change.
//! - [`fleet`]: which agents are online, and the signal that sends them
//!   a fresh roster and revocation list.
//! - [`policy`]: policy documents (YAML): validation, and each agent's
//!   effective policy.
//! - [`auth`]: who is calling (from the client certificate) and what each
//!   role may do; every admin call lands in the audit log.
//! - [`service`]: the gRPC services, agent-facing and admin-facing.
//! - [`backup`]: consistent backups of state and CA, and restore.
//! - [`tls`]: TLS for the server (client certificates optional, because
//!   enrolling agents have none yet) and for admin clients.
//! - [`server`]: start-up, the accept loop and graceful shutdown.

pub mod auth;
pub mod backup;
pub mod ca;
pub mod config;
pub mod fleet;
pub mod metrics;
pub mod policy;
pub mod rollout;
pub mod server;
pub mod service;
pub mod state;
pub mod tls;
pub mod tokens;
pub mod view;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

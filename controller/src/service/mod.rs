//! The controller's gRPC services: [`agent_control`] for agents
//! (enrollment, renewal, sessions, manifests), [`admin`] for operators,
//! [`policies`] for the policy calls and each agent's effective policy,
//! [`catalog`] for registering, withdrawing and finding packages.

pub mod admin;
pub mod agent_control;
pub mod catalog;
pub mod policies;
pub mod rollouts;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ca::FleetCa;
use crate::config::ControllerConfig;
use crate::fleet::Fleet;
use crate::rollout::Rollouts;
use crate::state::{State, StateError};
use crate::view::Views;

/// What every service shares.
#[derive(Debug)]
pub struct Shared {
    pub config: ControllerConfig,
    pub state: State,
    pub ca: FleetCa,
    pub fleet: Fleet,
    pub rollouts: Rollouts,
    /// What sessions send, per fleet change.
    pub views: Views,
    pub metrics: crate::metrics::ControllerMetrics,
    /// Owns per-session tasks; they stop on `cancel`.
    pub tasks: TaskTracker,
    pub cancel: CancellationToken,
}

pub type SharedRef = Arc<Shared>;

/// State failures are the controller's problem, not the caller's.
pub(crate) fn internal(e: StateError) -> tonic::Status {
    tracing::error!("state: {e}");
    tonic::Status::internal(format!("controller state: {e}"))
}

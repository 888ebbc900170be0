//! The controller's gRPC services: [`agent_control`] for agents
//! (enrollment, renewal, sessions), [`admin`] for operators, [`policies`]
//! for the policy calls and each agent's effective policy.

pub mod admin;
pub mod agent_control;
pub mod policies;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ca::FleetCa;
use crate::config::ControllerConfig;
use crate::fleet::Fleet;
use crate::state::{State, StateError};

/// What every service shares.
#[derive(Debug)]
pub struct Shared {
    pub config: ControllerConfig,
    pub state: State,
    pub ca: FleetCa,
    pub fleet: Fleet,
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

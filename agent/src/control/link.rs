//! The controller session's client, while a session is open, for the calls
//! other parts make besides the session itself: manifests for `shoal
//! fetch`, catalog searches for `shoal search`. Empty while the controller
//! is unreachable; callers then fall back to the swarm.

use std::sync::Mutex;

use shoal_proto::pb::agent_control_client::AgentControlClient;
use tonic::transport::Channel;

/// The open session's client, if any.
#[derive(Debug, Default)]
pub struct ControllerLink(Mutex<Option<AgentControlClient<Channel>>>);

impl ControllerLink {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<AgentControlClient<Channel>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set(&self, client: AgentControlClient<Channel>) {
        *self.lock() = Some(client);
    }

    pub(crate) fn clear(&self) {
        *self.lock() = None;
    }

    /// A client on the open session's connection.
    pub fn client(&self) -> Option<AgentControlClient<Channel>> {
        self.lock().clone()
    }
}

//! Agent events (transfer started, completed, failed; peer banned …):
//! logged as they happen and broadcast to `shoal events` subscribers.

use std::time::{SystemTime, UNIX_EPOCH};

use shoal_proto::pb;
use tokio::sync::broadcast;

/// Events kept for slow subscribers before they start missing some.
const EVENT_BACKLOG: usize = 1024;

/// Publishes events to the log and to subscribers.
#[derive(Debug, Clone)]
pub struct Events {
    tx: broadcast::Sender<pb::AgentEvent>,
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

impl Events {
    pub fn new() -> Self {
        Self {
            tx: broadcast::channel(EVENT_BACKLOG).0,
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<pb::AgentEvent> {
        self.tx.subscribe()
    }

    /// Emits an event. Errors and bans log as warnings, the rest as info.
    pub fn emit(&self, kind: &str, package: &str, message: impl Into<String>) {
        let message = message.into();
        if kind.ends_with("failed") || kind.contains("banned") || kind.contains("error") {
            tracing::warn!(event = kind, package, "{message}");
        } else {
            tracing::info!(event = kind, package, "{message}");
        }
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        // No subscribers is normal.
        let _ = self.tx.send(pb::AgentEvent {
            at_unix_ms: at,
            kind: kind.to_owned(),
            package: package.to_owned(),
            message,
        });
    }
}

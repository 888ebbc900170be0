//! The agents' local API, called from the harness's own process.
//!
//! The benchmarks sample every agent's progress every couple of seconds.
//! Running `shoal list --json` per agent per sample (a process start, a
//! connection, JSON) cost 2–2.5 % of a 2-core machine during a 30-host
//! run, charged to the swarm being measured, and took so long that samples
//! came 8 s apart. One client per agent, kept open, costs next to nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal_proto::pb;
use shoal_proto::pb::local_control_client::LocalControlClient;
use tonic::transport::{Channel, Endpoint};

/// How long one call may take before it counts as no answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Clients of the agents' control sockets, by socket path.
#[derive(Debug)]
pub struct LocalProbe {
    rt: tokio::runtime::Runtime,
    clients: HashMap<PathBuf, LocalControlClient<Channel>>,
}

impl LocalProbe {
    pub fn new() -> Result<Self, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("a runtime for the local probe: {e}"))?;
        Ok(Self {
            rt,
            clients: HashMap::new(),
        })
    }

    /// `bytes_done` of `package` (`name@version`) on the agent at
    /// `socket`; `None` when it does not answer or does not hold it.
    pub fn bytes_done(&mut self, socket: &Path, package: &str) -> Option<u64> {
        let (name, version) = package.rsplit_once('@')?;
        let list = self.call(socket, |mut c| async move {
            c.list(pb::ListRequest {}).await.map(|r| r.into_inner())
        })?;
        list.packages
            .iter()
            .find(|p| p.name == name && p.version == version)
            .map(|p| p.bytes_done)
    }

    /// The agent's status, if it answers.
    pub fn status(&mut self, socket: &Path) -> Option<pb::StatusResponse> {
        self.call(socket, |mut c| async move {
            c.status(pb::StatusRequest {}).await.map(|r| r.into_inner())
        })
    }

    /// Runs one call; a client that failed is dropped and dialled again
    /// next time (the agent may have been restarted).
    fn call<T, F, Fut>(&mut self, socket: &Path, f: F) -> Option<T>
    where
        F: FnOnce(LocalControlClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let client = match self.clients.get(socket) {
            Some(c) => c.clone(),
            None => {
                let c = self.rt.block_on(connect(socket))?;
                self.clients.insert(socket.to_owned(), c.clone());
                c
            }
        };
        // The timer needs the runtime: made inside `block_on`.
        let answer = self
            .rt
            .block_on(async move { tokio::time::timeout(CALL_TIMEOUT, f(client)).await });
        match answer {
            Ok(Ok(v)) => Some(v),
            _ => {
                self.clients.remove(socket);
                None
            }
        }
    }
}

async fn connect(socket: &Path) -> Option<LocalControlClient<Channel>> {
    let path = socket.to_owned();
    let endpoint = Endpoint::from_static("http://local.agent").connect_timeout(CALL_TIMEOUT);
    let channel = endpoint.connect_with_connector(tower::service_fn(move |_| {
        let p = path.clone();
        async move {
            let s = tokio::net::UnixStream::connect(p).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
        }
    }));
    tokio::time::timeout(CALL_TIMEOUT, channel)
        .await
        .ok()?
        .ok()
        .map(LocalControlClient::new)
}

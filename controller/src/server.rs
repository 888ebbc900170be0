//! Start-up and shutdown: opens the state and the CA, binds, serves both
//! services over TLS until told to stop, then drains within a grace
//! period.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shoal_agent::transport::server::tls_incoming;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ca::{CaError, FleetCa};
use crate::config::ControllerConfig;
use crate::fleet::Fleet;
use crate::service::admin::AdminService;
use crate::service::agent_control::AgentControlService;
use crate::service::{Shared, SharedRef};
use crate::state::{State, StateError};
use crate::tls::{TlsError, server_config};

/// How long shutdown waits for calls in progress.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr}: {cause}")]
    Bind {
        addr: SocketAddr,
        cause: std::io::Error,
    },
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
}

/// A running controller.
#[derive(Debug)]
pub struct Controller {
    shared: SharedRef,
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl Controller {
    pub async fn start(config: ControllerConfig) -> Result<Self, StartError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|cause| {
            StartError::State(StateError::Open {
                dir: config.data_dir.clone(),
                cause: sled::Error::Io(cause),
            })
        })?;
        let state = State::open(&config.data_dir.join("state"))?;
        let rollouts = crate::rollout::Rollouts::load(&state)?;
        let ca = FleetCa::open(&config.data_dir, config.ca.as_ref())?;
        ca.bootstrap_admin(&config.data_dir, config.admin_cert_validity)?;
        let tls = server_config(ca.cert_der(), ca.server_identity()?)?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|cause| StartError::Bind {
                    addr: config.listen,
                    cause,
                })?;
        let addr = listener.local_addr().map_err(|cause| StartError::Bind {
            addr: config.listen,
            cause,
        })?;
        tracing::info!(%addr, ca_fingerprint = %ca.fingerprint(), "controller listening");
        let (cancel, tasks) = (CancellationToken::new(), TaskTracker::new());
        let shared = Arc::new(Shared {
            config,
            state,
            ca,
            fleet: Fleet::default(),
            rollouts,
            views: Default::default(),
            metrics: crate::metrics::ControllerMetrics::new()
                .map_err(crate::metrics::MetricsError::from)?,
            tasks: tasks.clone(),
            cancel: cancel.clone(),
        });
        let metrics_addr = match shared.config.metrics_listen {
            Some(a) => {
                Some(crate::metrics::serve(shared.clone(), a, &tasks, cancel.clone()).await?)
            }
            None => None,
        };
        let incoming = tls_incoming(listener, tls, cancel.clone(), &tasks);
        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .add_service(AgentControlService::new(shared.clone()).into_server())
            .add_service(AdminService::new(shared.clone()).into_server());
        let stop = cancel.clone();
        tasks.spawn(async move {
            if let Err(e) = router
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await
            {
                tracing::error!("controller server failed: {e}");
            }
        });
        Ok(Self {
            shared,
            addr,
            metrics_addr,
            cancel,
            tasks,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/metrics` is served, if it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// SHA-256 of the fleet CA certificate, for `shoal-agent enroll`.
    pub fn ca_fingerprint(&self) -> String {
        self.shared.ca.fingerprint()
    }

    /// Stops serving, waits (bounded) for calls in progress, flushes.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some calls did not finish within {SHUTDOWN_GRACE:?}");
        }
        if let Err(e) = self.shared.state.flush().await {
            tracing::warn!("flushing state: {e}");
        }
    }
}

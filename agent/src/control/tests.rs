use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use shoal_proto::identity::CONTROLLER_ROLE;
use shoal_proto::pb;
use shoal_proto::pki::{CertificateAuthority, IssueRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::*;
use crate::agent::Agent;
use crate::config::{AgentConfig, TlsPaths};
use crate::discovery::Source;
use crate::transport::tls;

const DAY: Duration = Duration::from_secs(86_400);

#[test]
fn backoff_doubles_to_the_cap_with_jitter_and_resets() {
    let mut b = Backoff::new(Duration::from_secs(10));
    for cap in [1, 2, 4, 8, 10, 10] {
        let cap = Duration::from_secs(cap);
        let w = b.next_wait();
        assert!(
            w >= cap / 2 && w <= cap,
            "{w:?} not in [{:?}, {cap:?}]",
            cap / 2
        );
    }
    b.reset();
    assert!(b.next_wait() <= Duration::from_secs(1));
    // A cap below the start wins.
    let mut small = Backoff::new(Duration::from_millis(300));
    assert!(small.next_wait() <= Duration::from_millis(300));
}

#[tokio::test]
async fn the_route_to_a_loopback_controller_is_loopback() {
    let ip = route_to("127.0.0.1:7800").await.expect("a route");
    assert!(ip.is_loopback(), "{ip}");
}

// ---- against a stand-in controller over real TLS ---------------------------

/// Records reports; sends `updates` when a session opens; ends every
/// session when `stop` is cancelled.
#[derive(Debug)]
struct StandIn {
    reports: mpsc::Sender<pb::AgentReport>,
    updates: Vec<pb::ControllerUpdate>,
    stop: CancellationToken,
}

#[tonic::async_trait]
impl pb::agent_control_server::AgentControl for StandIn {
    async fn enroll(
        &self,
        _: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        Err(Status::unimplemented("stand-in"))
    }

    async fn renew(
        &self,
        _: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        Err(Status::unimplemented("stand-in"))
    }

    type SessionStream = ReceiverStream<Result<pb::ControllerUpdate, Status>>;

    async fn session(
        &self,
        req: Request<tonic::Streaming<pb::AgentReport>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        for u in &self.updates {
            let _ = tx.try_send(Ok(u.clone()));
        }
        let (reports, stop) = (self.reports.clone(), self.stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    r = inbound.message() => match r {
                        Ok(Some(r)) => { let _ = reports.try_send(r); }
                        _ => break,
                    },
                }
            }
            drop(tx);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_manifest(
        &self,
        _: Request<pb::GetManifestRequest>,
    ) -> Result<Response<pb::GetManifestResponse>, Status> {
        Err(Status::unimplemented("stand-in"))
    }

    async fn search_catalog(
        &self,
        _: Request<pb::SearchCatalogRequest>,
    ) -> Result<Response<pb::SearchCatalogResponse>, Status> {
        Err(Status::unimplemented("stand-in"))
    }
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM certificate")
}

/// Serves the stand-in as the controller of `ca`; returns its address.
async fn serve(ca: &CertificateAuthority, stand_in: StandIn) -> String {
    let mut req = IssueRequest::agent("controller", &[], DAY);
    req.roles = vec![CONTROLLER_ROLE.into()];
    let leaf = ca.issue(&req).expect("issue");
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key");
    let mut cfg = rustls::ServerConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(vec![der(&leaf.cert_pem), der(ca.cert_pem())], key)
        .expect("server config");
    cfg.alpn_protocols = vec![tls::ALPN_H2.to_vec()];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let cancel = stand_in.stop.clone();
    let tracker = tokio_util::task::TaskTracker::new();
    let incoming =
        crate::transport::server::tls_incoming(listener, Arc::new(cfg), cancel.clone(), &tracker);
    let server = tonic::transport::Server::builder()
        .add_service(pb::agent_control_server::AgentControlServer::new(stand_in))
        .serve_with_incoming_shutdown(incoming, cancel.cancelled_owned());
    tokio::spawn(server);
    addr
}

fn agent_config(ca: &CertificateAuthority, dir: &Path, controller: &str) -> AgentConfig {
    let issued = ca
        .issue(&IssueRequest::agent("me", &["lab"], DAY))
        .expect("issue");
    let tls = TlsPaths {
        ca: dir.join("ca.pem"),
        cert: dir.join("me.pem"),
        key: dir.join("me.key"),
    };
    std::fs::write(&tls.ca, ca.cert_pem()).expect("write");
    std::fs::write(&tls.cert, issued.cert_pem).expect("write");
    std::fs::write(&tls.key, issued.key_pem).expect("write");
    let mut c = AgentConfig::new(&dir.join("data"), tls);
    c.listen = "127.0.0.1:0".parse().expect("addr");
    c.mdns = false;
    c.deny = vec!["configured-deny".into()];
    let mut ctl = ControllerSettings::new(controller);
    ctl.status_interval = Duration::from_secs(1);
    ctl.reconnect_max = Duration::from_secs(2);
    c.controller = Some(ctl);
    c
}

fn id(agent_id: &str) -> shoal_proto::identity::Identity {
    shoal_proto::identity::Identity {
        agent_id: agent_id.into(),
        groups: Vec::new(),
        roles: Vec::new(),
        serial: "01".into(),
        not_before_unix: 0,
        not_after_unix: 0,
        fingerprint: String::new(),
    }
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_applies_updates_and_state_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = CertificateAuthority::generate("fleet").expect("CA");
    let update = |u| pb::ControllerUpdate { update: Some(u) };
    let roster_peer = |id: &str, addr: &str| pb::RosterPeer {
        agent_id: id.into(),
        addrs: vec![addr.into()],
        cert_fingerprint: "ab".repeat(32),
        groups: vec!["lab".into()],
    };
    let (reports_tx, mut reports) = mpsc::channel(64);
    let stop = CancellationToken::new();
    let addr = serve(
        &ca,
        StandIn {
            reports: reports_tx,
            updates: vec![
                update(Update::Revocations(pb::Revocations {
                    serials: vec!["0bad".into()],
                    agent_ids: vec!["lab-evil".into()],
                })),
                update(Update::Roster(pb::Roster {
                    peers: vec![
                        roster_peer("lab-a", "10.9.0.2:7400"),
                        roster_peer("me", "127.0.0.1:1"),
                    ],
                })),
                update(Update::Policy(pb::Policy::default())),
            ],
            stop: stop.clone(),
        },
    )
    .await;

    let agent = Agent::start(agent_config(&ca, dir.path(), &addr))
        .await
        .expect("agent starts");
    // Hello first, with where peers reach us; then status reports.
    let first = tokio::time::timeout(Duration::from_secs(10), reports.recv())
        .await
        .expect("a report in time")
        .expect("a report");
    let Some(pb::agent_report::Report::Hello(hello)) = first.report else {
        panic!("first report is not Hello: {first:?}");
    };
    assert_eq!(hello.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(hello.listen_addrs, vec![agent.listen_addr().to_string()]);
    let next = tokio::time::timeout(Duration::from_secs(10), reports.recv())
        .await
        .expect("a status in time")
        .expect("a status");
    assert!(
        matches!(next.report, Some(pb::agent_report::Report::Status(_))),
        "{next:?}"
    );

    let ctx = agent.context().clone();
    let session = agent.controller_session().expect("controller configured");
    eventually("the updates", || session.updates_received() >= 3).await;
    assert!(session.connected());
    assert!(ctx.deny.denies(&id("lab-evil")));
    assert!(ctx.deny.denies(&id("configured-deny")), "config kept");
    let mut by_serial = id("lab-b");
    by_serial.serial = "0bad".into();
    assert!(ctx.deny.denies(&by_serial));
    assert!(!ctx.deny.denies(&id("lab-a")));
    let peers = ctx.peers.snapshot();
    assert_eq!(peers.keys().collect::<Vec<_>>(), vec!["lab-a"]);
    assert_eq!(peers["lab-a"].source, Source::Roster);
    let data = dir.path().join("data");
    assert!(persist::path(&data, persist::REVOCATIONS_FILE).exists());
    assert!(persist::path(&data, persist::ROSTER_FILE).exists());

    // The controller goes away: the session says so, and retries.
    stop.cancel();
    eventually("the disconnect", || !session.connected()).await;
    assert!(session.last_error().is_some());
    drop(ctx); // holds the store open
    agent.shutdown().await;

    // Restarted with the controller still down: revocations and roster
    // are in force before any session.
    let agent = Agent::start(agent_config(&ca, dir.path(), &addr))
        .await
        .expect("agent restarts");
    let ctx = agent.context().clone();
    assert!(ctx.deny.denies(&id("lab-evil")));
    assert!(ctx.deny.denies(&id("configured-deny")));
    assert_eq!(
        ctx.peers.snapshot().keys().collect::<Vec<_>>(),
        vec!["lab-a"]
    );
    assert!(
        !agent
            .controller_session()
            .expect("controller configured")
            .connected()
    );
    drop(ctx);
    agent.shutdown().await;
}

//! Refusals: identities from another CA, expired or denied certificates,
//! malformed requests, untrusted manifests, and a peer that serves corrupt
//! chunks. Real mTLS on loopback; each refusal is a clear gRPC status and
//! nothing is stored.

use std::sync::atomic::Ordering;
use std::time::Duration;

use shoal_agent::agent::Agent;
use shoal_agent::config::TlsPaths;
use shoal_agent::store::PackageState;
use shoal_agent::transport::tls::TlsError;
use shoal_proto::chunking::ChunkingSpec;
use shoal_proto::pki::{CertificateAuthority, IssueRequest};
use shoal_proto::{PublisherKey, SignedManifest, pb};
use shoal_tests::evil::EvilPeer;
use shoal_tests::swarm::{Pki, connect_all, eventually, manifest_request, raw_client, tree_hashes};
use shoal_tests::write_random;
use tonic::Code;

/// A seed holding a published 8 MiB package (2 MiB chunks).
async fn seed_with_package(pki: &Pki, work: &std::path::Path) -> (Agent, SignedManifest) {
    let content = work.join("content");
    std::fs::create_dir_all(&content).expect("mkdir");
    write_random(&content.join("data.bin"), 8 << 20, b"security");
    let signed = pki.package(
        &content,
        "lab/sec",
        ChunkingSpec::fixed(2 << 20).expect("valid"),
    );
    let seed = Agent::start(pki.config("seed", &work.join("seed")))
        .await
        .expect("seed");
    seed.publish(&signed, &content).await.expect("publish");
    (seed, signed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_expired_and_denied_identities_get_nothing() {
    let pki = Pki::new();
    let work = tempfile::tempdir().expect("tempdir");
    let (seed, _signed) = seed_with_package(&pki, work.path()).await;
    let addr = seed.listen_addr().to_string();

    // A valid identity works.
    let good = pki.agent_tls("good", &["lab"]);
    let mut c = raw_client(&good, &addr).await.expect("connects");
    c.get_manifest(manifest_request("lab/sec@1"))
        .await
        .expect("served");

    // Another CA's certificate (the client trusts our CA, so only the
    // server's check stands in the way).
    let other = CertificateAuthority::generate("someone else").expect("ca");
    let issued = other
        .issue(&IssueRequest::agent(
            "intruder",
            &["lab"],
            Duration::from_secs(3600),
        ))
        .expect("issue");
    let dir = work.path().join("intruder");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("c.pem"), issued.cert_pem).expect("write");
    std::fs::write(dir.join("c.key"), issued.key_pem).expect("write");
    let foreign = TlsPaths {
        ca: pki.dir.path().join("ca.pem"),
        cert: dir.join("c.pem"),
        key: dir.join("c.key"),
    };
    let refused = match raw_client(&foreign, &addr).await {
        Err(_) => true,
        Ok(mut c) => c.get_manifest(manifest_request("lab/sec@1")).await.is_err(),
    };
    assert!(refused, "a certificate from another CA was served");

    // An expired certificate from our CA.
    let mut req = IssueRequest::agent("stale", &["lab"], Duration::from_secs(3600));
    req.backdate = Some(Duration::from_secs(3 * 3600));
    let expired = pki.issue(req);
    let refused = match raw_client(&expired, &addr).await {
        Err(_) => true,
        Ok(mut c) => c.get_manifest(manifest_request("lab/sec@1")).await.is_err(),
    };
    assert!(refused, "an expired certificate was served");
    // And an agent will not even start with one.
    let mut cfg = pki.config("stale2", &work.path().join("stale2"));
    let mut req = IssueRequest::agent("stale2", &["lab"], Duration::from_secs(3600));
    req.backdate = Some(Duration::from_secs(3 * 3600));
    cfg.tls = pki.issue(req);
    match Agent::start(cfg).await {
        Err(shoal_agent::agent::StartError::Tls(TlsError::Expired { .. })) => {}
        other => panic!("started with an expired certificate: {other:?}"),
    }

    // Nothing was sent to any of them.
    let sent = seed.context().counters.sent.load(Ordering::Relaxed);
    assert_eq!(sent, 0);

    // The deny list: a second seed denying "good".
    let mut cfg = pki.config("seed2", &work.path().join("seed2"));
    cfg.deny = vec!["good".into()];
    let seed2 = Agent::start(cfg).await.expect("seed2");
    let refused = match raw_client(&good, &seed2.listen_addr().to_string()).await {
        Err(_) => true,
        Ok(mut c) => c.get_manifest(manifest_request("lab/sec@1")).await.is_err(),
    };
    assert!(refused, "a denied agent was served");
    seed2.shutdown().await;
    seed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_clear_statuses() {
    let pki = Pki::new();
    let work = tempfile::tempdir().expect("tempdir");
    let (seed, signed) = seed_with_package(&pki, work.path()).await;
    let addr = seed.listen_addr().to_string();
    let mut c = raw_client(&pki.agent_tls("probe", &["lab"]), &addr)
        .await
        .expect("connects");
    let cid = bytes::Bytes::copy_from_slice(signed.content_id().as_bytes());

    let code = |r: Result<tonic::Response<pb::GetManifestResponse>, tonic::Status>| {
        r.expect_err("refused").code()
    };
    assert_eq!(
        code(c.get_manifest(manifest_request("lab/none@1")).await),
        Code::NotFound
    );
    assert_eq!(
        code(c.get_manifest(manifest_request("no-version")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.get_manifest(pb::GetManifestRequest { package: None })
                .await
        ),
        Code::InvalidArgument
    );
    let short_id = pb::GetManifestRequest {
        package: Some(pb::PackageRef {
            r#ref: Some(pb::package_ref::Ref::ContentId(vec![1, 2, 3].into())),
        }),
    };
    assert_eq!(code(c.get_manifest(short_id).await), Code::InvalidArgument);

    let watch = c
        .watch_availability(pb::WatchAvailabilityRequest {
            content_id: vec![9; 3].into(),
        })
        .await;
    assert_eq!(watch.expect_err("short id").code(), Code::InvalidArgument);

    let fetch = |chunks: Vec<u32>| pb::FetchChunksRequest {
        content_id: cid.clone(),
        chunks,
    };
    let status = |r: Result<tonic::Response<tonic::Streaming<pb::ChunkFrame>>, tonic::Status>| {
        let s = r.expect_err("refused");
        (s.code(), s.message().to_owned())
    };
    let (code_, msg) = status(c.fetch_chunks(fetch(vec![])).await);
    assert_eq!(code_, Code::InvalidArgument, "{msg}");
    let (code_, msg) = status(c.fetch_chunks(fetch(vec![4])).await);
    assert_eq!(code_, Code::InvalidArgument, "{msg}");
    assert!(msg.contains("out of range"), "{msg}");
    let (code_, msg) = status(c.fetch_chunks(fetch(vec![0; 300])).await);
    assert_eq!(code_, Code::InvalidArgument, "{msg}");
    // An oversized request message (about 10 MB of chunk indices).
    let (code_, msg) = status(c.fetch_chunks(fetch(vec![1; 2_500_000])).await);
    assert!(
        matches!(
            code_,
            Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument
        ),
        "{code_:?} {msg}"
    );

    // An agent that knows the package but holds none of it yet. A watch
    // that comes before its download starts waits for it, then gets the
    // (empty) snapshot.
    let empty = Agent::start(pki.config("empty", &work.path().join("empty")))
        .await
        .expect("agent");
    let mut e = raw_client(
        &pki.agent_tls("probe2", &["lab"]),
        &empty.listen_addr().to_string(),
    )
    .await
    .expect("connects");
    let mut early = e
        .watch_availability(pb::WatchAvailabilityRequest {
            content_id: cid.clone(),
        })
        .await
        .expect("a watch of a package not held yet waits")
        .into_inner();
    let verified = signed.verify(&empty.context().trusted()).expect("verify");
    empty
        .context()
        .store
        .add_download(&verified, 0, false)
        .await
        .expect("admit");
    let first = tokio::time::timeout(Duration::from_secs(20), early.message())
        .await
        .expect("the waiting watch answers once the download starts")
        .expect("stream")
        .expect("a message");
    match first.update {
        Some(pb::availability_update::Update::Snapshot(b)) => {
            assert_eq!(b.chunk_count as usize, verified.manifest.chunks.len());
            assert!(b.bits.iter().all(|&x| x == 0), "holds nothing yet");
        }
        other => panic!("expected a snapshot, got {other:?}"),
    }
    let (code_, msg) = status(e.fetch_chunks(fetch(vec![0])).await);
    assert_eq!(code_, Code::FailedPrecondition, "{msg}");
    assert!(msg.contains("not held"), "{msg}");

    // The seed still serves a proper request after all that.
    let mut s = c
        .fetch_chunks(fetch(vec![0, 1]))
        .await
        .expect("served")
        .into_inner();
    let mut bytes = 0;
    while let Some(f) = s.message().await.expect("frame") {
        bytes += f.data.len();
    }
    assert_eq!(bytes, 4 << 20);
    empty.shutdown().await;
    seed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_manifest_is_refused_and_nothing_is_stored() {
    let pki = Pki::new();
    let work = tempfile::tempdir().expect("tempdir");
    let content = work.path().join("content");
    std::fs::create_dir_all(&content).expect("mkdir");
    write_random(&content.join("x.bin"), 1 << 20, b"x");
    // Signed by a key the agents do not trust.
    let rogue = PublisherKey::generate().expect("key");
    let opts = shoal_proto::package::CreateOptions {
        name: "lab/rogue".into(),
        version: "1".into(),
        chunking: ChunkingSpec::fixed(1 << 20).expect("valid"),
        publisher: rogue.public(),
        threads: 1,
        created_unix_ms: Some(0),
        labels: Default::default(),
    };
    let m = shoal_proto::package::create_manifest(&content, &opts, &()).expect("create");
    let signed = SignedManifest::sign(&m, &rogue).expect("sign");
    let evil = EvilPeer::start(&pki.agent_tls("rogue-peer", &["lab"]), signed).await;

    let agent = Agent::start(pki.config("victim", &work.path().join("victim")))
        .await
        .expect("agent");
    shoal_agent::discovery::add_static_peers(&agent.context().peers, &[evil.addr.to_string()]);
    let err = agent.fetch("lab/rogue@1").await.expect_err("refused");
    assert!(err.to_string().contains("not a trusted publisher"), "{err}");
    assert!(
        agent.context().store.list().is_empty(),
        "something was stored"
    );
    // The seed refuses to publish it too.
    let e = agent
        .publish(&SignedManifest::sign(&m, &rogue).expect("sign"), &content)
        .await;
    assert!(e.is_err());
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupting_peer_is_banned_and_everyone_completes() {
    let pki = Pki::new();
    let work = tempfile::tempdir().expect("tempdir");
    let content = work.path().join("content");
    std::fs::create_dir_all(&content).expect("mkdir");
    write_random(&content.join("image.bin"), 32 << 20, b"ban");
    let signed = pki.package(
        &content,
        "lab/ban",
        ChunkingSpec::fixed(1 << 20).expect("valid"),
    );

    // A slow honest seed, so the fast liar gets asked for plenty.
    let mut seed_cfg = pki.config("seed", &work.path().join("seed"));
    seed_cfg.limits.upload_rate = 16 << 20;
    let seed = Agent::start(seed_cfg).await.expect("seed");
    seed.publish(&signed, &content).await.expect("publish");
    let evil = EvilPeer::start(&pki.agent_tls("liar", &["lab"]), signed.clone()).await;

    let mut agents = Vec::new();
    for i in 0..3 {
        let id = format!("agent-{i}");
        agents.push(
            Agent::start(pki.config(&id, &work.path().join(&id)))
                .await
                .expect("agent"),
        );
    }
    let mut all: Vec<&Agent> = agents.iter().collect();
    all.push(&seed);
    connect_all(&all);
    for a in &agents {
        shoal_agent::discovery::add_static_peers(&a.context().peers, &[evil.addr.to_string()]);
        a.fetch("lab/ban@1").await.expect("queued");
    }
    let id = signed.content_id();
    eventually(Duration::from_secs(120), "every agent to complete", || {
        agents.iter().all(|a| {
            a.context()
                .store
                .get(&id)
                .is_some_and(|p| p.record().state == PackageState::Complete)
        })
    })
    .await;
    let expected = tree_hashes(&content);
    let manifest = signed.manifest_unverified().expect("valid");
    let mut banned_by = 0;
    for a in &agents {
        assert_eq!(
            tree_hashes(&a.context().store.stable_path(&manifest)),
            expected
        );
        if a.context().reputation.is_banned("liar") {
            banned_by += 1;
            assert!(a.context().counters.chunks_rejected.load(Ordering::Relaxed) >= 3);
        }
    }
    assert!(banned_by >= 1, "nobody banned the corrupting peer");
    for a in agents {
        a.shutdown().await;
    }
    seed.shutdown().await;
}

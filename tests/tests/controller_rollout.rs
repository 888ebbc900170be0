//! The catalog and the push, end to end with a real controller and real
//! agents: namespaces check signatures, publishers and quotas; a package
//! restricted to group lab-a reaches every agent of lab-a through a
//! two-wave rollout and none of lab-b, which gets its manifest neither
//! from the controller nor from a peer; a controller killed mid-rollout
//! leaves the transfers running and reports the rollout right when it is
//! back; a withdrawn package is removed where it is not pinned.

use std::path::Path;
use std::time::Duration;

use shoal_agent::config::TlsPaths;
use shoal_proto::chunking::ChunkingSpec;
use shoal_proto::pb;
use shoal_tests::controller::{ControllerProcess, enroll, start_agent, wait_until};
use shoal_tests::process::AgentProcess;
use shoal_tests::swarm::{Pki, tree_hashes};

const LIMIT: Duration = Duration::from_secs(90);

fn enrolled(ctl: &ControllerProcess, token: &str, fp: &str, host: &str, dir: &Path) -> TlsPaths {
    let (run, tls) = enroll(&ctl.addr, token, fp, host, dir);
    assert_eq!(run.code, 0, "{host}: {}{}", run.stdout, run.stderr);
    tls
}

fn rollout(ctl: &ControllerProcess, package: &str) -> serde_json::Value {
    let run = ctl.cli(&["rollout", "status", package, "--json"]);
    assert_eq!(run.code, 0, "rollout status: {}{}", run.stdout, run.stderr);
    run.json()
}

/// Asks the controller for a manifest with an agent's own certificate.
fn controller_manifest(ctl: &ControllerProcess, tls: &TlsPaths, package: &str) -> tonic::Code {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let identity = shoal_agent::transport::tls::TlsIdentity::load(tls).expect("identity");
        let config = shoal_agent::enroll::controller_client_config(&identity).expect("tls");
        let (channel, _) = shoal_agent::transport::client::Connector::new(config)
            .connect(&ctl.addr, Some("controller"))
            .await
            .expect("connect");
        let mut client = pb::agent_control_client::AgentControlClient::new(channel);
        match client
            .get_manifest(shoal_tests::swarm::manifest_request(package))
            .await
        {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        }
    })
}

/// A peer's answers to `tls`'s holder for package `id` (hex): chunk 0,
/// and the availability stream.
fn chunk_refusal(tls: &TlsPaths, addr: &str, id: &str) -> (tonic::Code, tonic::Code) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut c = shoal_tests::swarm::raw_client(tls, addr)
            .await
            .expect("connect");
        let cid: shoal_proto::ContentId = id.parse().expect("content id");
        let content_id = bytes::Bytes::copy_from_slice(cid.as_bytes());
        let chunks = match c
            .fetch_chunks(pb::FetchChunksRequest {
                content_id: content_id.clone(),
                chunks: vec![0],
            })
            .await
        {
            Ok(mut s) => match s.get_mut().message().await {
                Ok(_) => tonic::Code::Ok,
                Err(e) => e.code(),
            },
            Err(e) => e.code(),
        };
        let watch = match c
            .watch_availability(pb::WatchAvailabilityRequest { content_id })
            .await
        {
            Ok(_) => tonic::Code::Ok,
            Err(e) => e.code(),
        };
        (chunks, watch)
    })
}

fn holds(a: &AgentProcess, package: &str) -> bool {
    a.package_state(package).as_deref() == Some("complete")
}

#[test]
fn catalog_acl_waves_controller_outage_and_withdrawal() {
    let work = tempfile::tempdir().expect("tempdir");
    let mut ctl = ControllerProcess::start(&work.path().join("controller"));
    let fp = ctl.fingerprint();
    let pki = Pki::new();
    let hosts = [
        ("seed", "origin"),
        ("a1", "lab-a"),
        ("a2", "lab-a"),
        ("b1", "lab-b"),
    ];
    let ids: Vec<TlsPaths> = hosts
        .iter()
        .map(|(h, g)| {
            let token = ctl.token(&[g], "1h", 1);
            enrolled(&ctl, &token, &fp, h, &work.path().join(format!("{h}-id")))
        })
        .collect();
    let agents: Vec<AgentProcess> = hosts
        .iter()
        .zip(&ids)
        .map(|((h, _), tls)| start_agent(&pki, &ctl, h, &work.path().join(h), tls.clone()))
        .collect();
    let [seed, a1, a2, b1] = [&agents[0], &agents[1], &agents[2], &agents[3]];

    // Namespaces: the key and the quota are the namespace's.
    let key = pki.publisher.public().to_string();
    let run = ctl.cli(&[
        "namespace",
        "set",
        "course",
        "--key",
        &key,
        "--quota",
        "40MiB",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let pkg_dir = |n: &str| {
        let d = work.path().join(n);
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    };
    let fixed = || ChunkingSpec::fixed(1 << 20).expect("valid");
    let (week1, week1_manifest) =
        pki.write_package(&pkg_dir("w1"), "course/week1", 16 << 20, fixed());
    let (_, unknown_ns) = pki.write_package(&pkg_dir("u"), "nowhere/x", 1 << 20, fixed());
    let run = ctl.cli(&["package", "register", unknown_ns.to_str().expect("utf-8")]);
    assert_eq!(run.code, 64, "unknown namespace: {}", run.stderr);
    assert!(
        run.stderr.contains("namespace set nowhere"),
        "{}",
        run.stderr
    );

    let w1 = week1_manifest.to_str().expect("utf-8");
    let run = ctl.cli(&["package", "register", w1, "--allowed-group", "lab-a"]);
    assert_eq!(run.code, 0, "register: {}{}", run.stdout, run.stderr);
    let (_, too_big) = pki.write_package(&pkg_dir("big"), "course/huge", 30 << 20, fixed());
    let run = ctl.cli(&["package", "register", too_big.to_str().expect("utf-8")]);
    assert_eq!(run.code, 73, "over quota: {}", run.stderr);
    assert!(run.stderr.contains("over its quota"), "{}", run.stderr);

    // A publisher identity outside the namespace is refused; one named in
    // it may register.
    let ids_dir = work.path().join("identities");
    for who in ["alice", "mallory"] {
        let run = ctl.cli(&[
            "identity",
            "create",
            "--for",
            who,
            "--role",
            "publisher",
            "--out",
            ids_dir.to_str().expect("utf-8"),
        ]);
        assert_eq!(run.code, 0, "{}", run.stderr);
    }
    let run = ctl.cli(&[
        "namespace",
        "set",
        "course",
        "--key",
        &key,
        "--quota",
        "40MiB",
        "--publisher",
        "alice",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let (week2, week2_manifest) =
        pki.write_package(&pkg_dir("w2"), "course/week2", 16 << 20, fixed());
    let w2 = week2_manifest.to_str().expect("utf-8");
    let as_who = |who: &str, args: &[&str]| {
        let mut a = vec![
            "--identity",
            ids_dir.to_str().expect("utf-8"),
            "--name",
            who,
        ];
        a.extend_from_slice(args);
        ctl.cli(&a)
    };
    let run = as_who("mallory", &["package", "register", w2]);
    assert_eq!(run.code, 77, "mallory: {}", run.stderr);
    let run = as_who(
        "alice",
        &["package", "register", w2, "--allowed-group", "lab-a"],
    );
    assert_eq!(run.code, 0, "alice: {}", run.stderr);
    let run = as_who("alice", &["assign", "course/week2@1", "--group", "lab-a"]);
    assert_eq!(run.code, 77, "publishers do not assign: {}", run.stderr);

    // The catalog lists both; lab-b may not be assigned a lab-a package.
    let run = ctl.cli(&["catalog", "course/", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json().as_array().map(Vec::len), Some(2));
    let run = ctl.cli(&["assign", "course/week1@1", "--group", "lab-b"]);
    assert_eq!(run.code, 64, "restricted package to lab-b: {}", run.stderr);

    // Push week 1 to lab-a in two waves.
    seed.publish(&week1_manifest, &week1);
    let run = ctl.cli(&[
        "assign",
        "course/week1@1",
        "--group",
        "lab-a",
        "--waves",
        "50%,100%",
    ]);
    assert_eq!(run.code, 0, "assign: {}{}", run.stdout, run.stderr);
    wait_until("week 1 on every lab-a agent", LIMIT, || {
        rollout(&ctl, "course/week1@1")["done"] == 2
    });
    let status = rollout(&ctl, "course/week1@1");
    assert_eq!(status["current_wave"], 2, "{status}");
    let waves: Vec<u64> = status["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .filter_map(|a| a["wave"].as_u64())
        .collect();
    assert_eq!(waves, vec![1, 2], "{status}");
    for a in [a1, a2] {
        assert_eq!(
            tree_hashes(&a.dir.join("data/packages/course_week1@1")),
            tree_hashes(&week1),
            "{}",
            a.id
        );
    }

    // lab-b gets it from no one: not the controller, not a peer.
    assert_eq!(
        controller_manifest(&ctl, &ids[3], "course/week1@1"),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        controller_manifest(&ctl, &ids[1], "course/week1@1"),
        tonic::Code::Ok
    );
    let run = b1.shoal(&["fetch", "course/week1@1", "--json"]);
    assert_ne!(run.code, 0, "lab-b fetched a lab-a package: {}", run.stdout);
    assert!(
        run.stderr.contains("restricted") || run.stdout.contains("restricted"),
        "{}{}",
        run.stdout,
        run.stderr
    );
    assert_eq!(b1.bytes_done("course/week1@1"), 0);
    // Asked directly, with its own certificate, a lab-a agent serves lab-b
    // no chunk of it, and no availability either.
    let week1_id = a1
        .shoal(&["list", "--json"])
        .json()
        .as_array()
        .and_then(|l| {
            l.iter()
                .find(|p| p["name"] == "course/week1")
                .and_then(|p| p["content_id"].as_str().map(str::to_owned))
        })
        .expect("a1 lists week 1");
    assert_eq!(
        chunk_refusal(&ids[3], &a1.addr(), &week1_id),
        (tonic::Code::PermissionDenied, tonic::Code::PermissionDenied)
    );
    assert_eq!(
        chunk_refusal(&ids[2], &a1.addr(), &week1_id),
        (tonic::Code::Ok, tonic::Code::Ok),
        "lab-a peers are served"
    );
    // The catalog each agent browses is what it may fetch.
    let run = b1.shoal(&["list", "--catalog", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.json().as_array().map(Vec::len),
        Some(0),
        "{}",
        run.stdout
    );
    let run = a1.shoal(&["list", "--catalog", "--json"]);
    assert_eq!(
        run.json().as_array().map(Vec::len),
        Some(2),
        "{}",
        run.stdout
    );
    let run = a1.shoal(&["search", "week2", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.json()["catalog"].as_array().map(Vec::len),
        Some(1),
        "{}",
        run.stdout
    );

    // Week 2, throttled so the controller can be killed mid-transfer.
    let policy = work.path().join("slow.yaml");
    std::fs::write(
        &policy,
        "name: lab-a-slow\ntarget: {groups: [lab-a]}\nlimits: {download_rate: 32Mbit/s}\n",
    )
    .expect("write policy");
    let run = ctl.cli(&["apply", "-f", policy.to_str().expect("utf-8")]);
    assert_eq!(run.code, 0, "apply: {}", run.stderr);
    seed.publish(&week2_manifest, &week2);
    let run = ctl.cli(&["assign", "course/week2@1", "--group", "lab-a", "--pin"]);
    assert_eq!(run.code, 0, "assign: {}", run.stderr);
    wait_until("week 2 under way on lab-a", LIMIT, || {
        [a1, a2].iter().all(|a| a.bytes_done("course/week2@1") > 0)
    });
    ctl.kill9();
    wait_until("week 2 done without the controller", LIMIT, || {
        holds(a1, "course/week2@1") && holds(a2, "course/week2@1")
    });
    ctl.restart();
    wait_until("the rollout right after the restart", LIMIT, || {
        let s = rollout(&ctl, "course/week2@1");
        s["done"] == 2 && s["failed"] == 0
    });

    // Withdraw week 1: removed (not pinned), no longer listed.
    let run = ctl.cli(&["package", "withdraw", "course/week1@1"]);
    assert_eq!(run.code, 0, "withdraw: {}", run.stderr);
    wait_until("week 1 gone from lab-a", LIMIT, || {
        a1.package_state("course/week1@1").is_none() && a2.package_state("course/week1@1").is_none()
    });
    assert!(holds(a1, "course/week2@1"), "week 2 kept");
    assert!(ctl.log().contains("package withdrawn"));
}

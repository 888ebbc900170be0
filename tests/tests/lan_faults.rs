//! Faults on the network-namespace LAN (100 Mbit/s links, one host per
//! agent, static peers by address): `kill -9` mid-transfer and resume, a
//! peer serving corrupt chunks, and identities from another CA or expired.
//! The same scenarios as `resume_after_kill.rs` and `swarm_security.rs`,
//! across real links instead of loopback. Skips with a message where
//! namespaces cannot be made (needs root; CI runs as root).
#![cfg(target_os = "linux")]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shoal_agent::config::TlsPaths;
use shoal_proto::chunking::ChunkingSpec;
use shoal_proto::pb;
use shoal_proto::pki::{CertificateAuthority, IssueRequest};
use shoal_tests::evil::EvilPeer;
use shoal_tests::netns::{Host, NsRuntime, Testbed, unavailable};
use shoal_tests::process::{AgentOptions, AgentProcess, wait_complete};
use shoal_tests::swarm::{Pki, manifest_request, raw_client, tree_hashes};
use shoal_tests::write_random;

const RATE: &str = "100mbit";
const PORT: u16 = 7400;

/// The testbed, or `None` (and a SKIPPED line) where it cannot be made.
fn testbed(test: &str, hosts: usize) -> Option<Testbed> {
    if let Some(why) = unavailable() {
        eprintln!("SKIPPED {test}: {why}");
        return None;
    }
    Some(Testbed::new(hosts, Some(RATE)).expect("testbed"))
}

fn addr(h: &Host) -> String {
    format!("{}:{PORT}", h.ip)
}

/// An agent on `host`, mDNS off, knowing `peers` (addresses) statically.
fn agent_on(
    pki: &Pki,
    work: &std::path::Path,
    host: &Host,
    id: &str,
    peers: &[String],
    tls: Option<TlsPaths>,
) -> AgentProcess {
    AgentProcess::start_with(
        pki,
        id,
        &work.join(id),
        AgentOptions {
            listen: Some(addr(host)),
            netns: Some(host.ns.clone()),
            mdns: false,
            static_peers: peers
                .iter()
                .filter(|p| **p != addr(host))
                .cloned()
                .collect(),
            tls,
            ..Default::default()
        },
    )
}

fn fetch(a: &AgentProcess, package: &str) {
    let run = a.shoal(&["fetch", package]);
    assert_eq!(
        run.code,
        0,
        "{}: fetch: {}{}\nlog:\n{}",
        a.id,
        run.stdout,
        run.stderr,
        a.log()
    );
}

/// Where an agent keeps `name@version` once complete.
fn stable_path(a: &AgentProcess, package: &str) -> std::path::PathBuf {
    a.dir.join("data/packages").join(package.replace('/', "_"))
}

/// Two of eight agents are killed with SIGKILL at about 40 % and restarted:
/// everyone completes bit-identical, and the restarted agents fetch only
/// what they lacked (plus requests in flight at the kill).
#[test]
fn kill9_mid_transfer_resumes_on_lan() {
    const PKG: &str = "lab/lanresume@1";
    const SIZE: u64 = 64 << 20;
    /// What may be fetched twice, as in resume_after_kill.rs (a quarter of
    /// the package): requests in flight at the kill, bitfield updates not
    /// yet flushed, end-game duplicates.
    const SLACK: u64 = 16 << 20;
    let Some(tb) = testbed("kill9_mid_transfer_resumes_on_lan", 9) else {
        return;
    };
    let pki = Pki::new();
    let work = tempfile::tempdir().expect("tempdir");
    let (content, manifest) = pki.write_package(
        work.path(),
        "lab/lanresume",
        SIZE,
        ChunkingSpec::fixed(1 << 20).expect("valid"),
    );
    let addrs: Vec<String> = tb.hosts.iter().map(addr).collect();
    let mut agents: Vec<AgentProcess> = tb
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let id = if i == 0 {
                "seed".to_owned()
            } else {
                format!("host-{i}")
            };
            agent_on(&pki, work.path(), h, &id, &addrs, None)
        })
        .collect();
    agents[0].publish(&manifest, &content);
    let started = Instant::now();
    for a in &agents[1..] {
        fetch(a, PKG);
    }

    // Kill each victim once it holds 40 %.
    let victims = [2, 6];
    let mut held: [Option<u64>; 2] = [None; 2];
    let deadline = Instant::now() + Duration::from_secs(60);
    while held.iter().any(Option::is_none) {
        for (k, &i) in victims.iter().enumerate() {
            if held[k].is_some() {
                continue;
            }
            let a = &mut agents[i];
            let done = a.bytes_done(PKG);
            assert!(done < SIZE, "{} finished before it could be killed", a.id);
            if done >= SIZE * 2 / 5 {
                a.kill9();
                held[k] = Some(done);
                eprintln!(
                    "{}: killed at {:.1} s holding {} MiB ({:.0} %)",
                    a.id,
                    started.elapsed().as_secs_f64(),
                    done >> 20,
                    done as f64 * 100.0 / SIZE as f64
                );
            }
        }
        assert!(
            Instant::now() < deadline,
            "the victims made too little progress: {held:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for &i in &victims {
        agents[i].restart();
    }

    // Everybody completes; the victims resume on their own.
    let all: Vec<&AgentProcess> = agents[1..].iter().collect();
    wait_complete(&all, PKG, SIZE, Duration::from_secs(120));
    eprintln!(
        "{} agents complete after {:.1} s",
        all.len(),
        started.elapsed().as_secs_f64()
    );
    let expected = tree_hashes(&content);
    for a in &all {
        assert_eq!(
            tree_hashes(&stable_path(a, PKG)),
            expected,
            "{} differs",
            a.id
        );
    }
    for (&i, held) in victims.iter().zip(held) {
        let a = &agents[i];
        let held = held.expect("killed");
        let received = a.status_u64("bytes_received");
        eprintln!(
            "{}: held {:.1} MiB at the kill, fetched {:.1} MiB after restart (of {} MiB)",
            a.id,
            held as f64 / f64::from(1 << 20),
            received as f64 / f64::from(1 << 20),
            SIZE >> 20
        );
        assert!(
            received <= SIZE - held + SLACK,
            "{} fetched {received} bytes after restart but held {held} of {SIZE} before the kill",
            a.id
        );
        assert!(
            a.log().contains("restored package"),
            "{}: no resume in the log",
            a.id
        );
    }
}

/// A peer on its own host serves the real manifest and announces every
/// chunk but answers with garbage: it is banned, and the honest agents
/// complete bit-identical from the seed and each other.
#[test]
fn corrupting_peer_is_banned_on_lan() {
    const PKG: &str = "lab/lanban@1";
    const SIZE: u64 = 32 << 20;
    let Some(tb) = testbed("corrupting_peer_is_banned_on_lan", 5) else {
        return;
    };
    let pki = Pki::new();
    let work = tempfile::tempdir().expect("tempdir");
    let content = work.path().join("content");
    std::fs::create_dir_all(&content).expect("mkdir");
    write_random(&content.join("image.bin"), SIZE, b"lanban");
    let signed = pki.package(
        &content,
        "lab/lanban",
        ChunkingSpec::fixed(1 << 20).expect("valid"),
    );
    let manifest = work.path().join("package.manifest");
    std::fs::write(&manifest, signed.encode()).expect("write manifest");

    // Host 0: the seed. Host 1: the liar, in-process on a thread inside
    // that host's namespace. Hosts 2–4: honest agents.
    let addrs: Vec<String> = tb.hosts.iter().map(addr).collect();
    let seed = agent_on(&pki, work.path(), &tb.hosts[0], "seed", &[], None);
    seed.publish(&manifest, &content);
    let liar_ns = NsRuntime::new(&tb.hosts[1]).expect("a runtime in the liar's namespace");
    let liar_tls = pki.agent_tls("liar", &["lab"]);
    let bind = SocketAddr::new(tb.hosts[1].ip.into(), PORT);
    let liar = liar_ns.run(Duration::from_secs(10), async move {
        EvilPeer::start_on(&liar_tls, signed, bind).await
    });
    assert_eq!(liar.addr, bind);
    let agents: Vec<AgentProcess> = (2..tb.hosts.len())
        .map(|i| {
            agent_on(
                &pki,
                work.path(),
                &tb.hosts[i],
                &format!("host-{i}"),
                &addrs,
                None,
            )
        })
        .collect();
    let started = Instant::now();
    for a in &agents {
        fetch(a, PKG);
    }
    let all: Vec<&AgentProcess> = agents.iter().collect();
    wait_complete(&all, PKG, SIZE, Duration::from_secs(120));
    eprintln!(
        "{} agents complete after {:.1} s",
        all.len(),
        started.elapsed().as_secs_f64()
    );
    let expected = tree_hashes(&content);
    let mut banned_by = 0;
    for a in &agents {
        assert_eq!(
            tree_hashes(&stable_path(a, PKG)),
            expected,
            "{} differs",
            a.id
        );
        let log = a.log();
        let rejected = log.matches("rejected a chunk").count();
        let banned = log.contains("banned liar") || a.has_banned("liar");
        eprintln!(
            "{}: rejected {rejected} chunks, banned the liar: {banned}",
            a.id
        );
        if banned {
            banned_by += 1;
            assert!(rejected >= 3, "{} banned after {rejected} bad chunks", a.id);
        }
    }
    assert!(banned_by >= 1, "nobody banned the corrupting peer");
    // Stop the liar, then its thread.
    drop(liar);
    drop(liar_ns);
}

/// Writes a certificate for `agent_id` from a CA the fleet does not trust
/// (the fleet CA stays the trust root, so only the other side's check can
/// refuse it).
fn foreign_identity(pki: &Pki, dir: &std::path::Path, agent_id: &str) -> TlsPaths {
    let other = CertificateAuthority::generate("someone else").expect("ca");
    let issued = other
        .issue(&IssueRequest::agent(
            agent_id,
            &["lab"],
            Duration::from_secs(3600),
        ))
        .expect("issue");
    std::fs::create_dir_all(dir).expect("mkdir");
    let tls = TlsPaths {
        ca: pki.dir.path().join("ca.pem"),
        cert: dir.join(format!("{agent_id}.pem")),
        key: dir.join(format!("{agent_id}.key")),
    };
    std::fs::write(&tls.cert, issued.cert_pem).expect("write");
    std::fs::write(&tls.key, issued.key_pem).expect("write");
    tls
}

/// Whether `tls` is refused by the agent at `addr`: no connection, or no
/// manifest and no chunk.
async fn refused(tls: TlsPaths, addr: String, content_id: bytes::Bytes, package: &str) -> bool {
    match raw_client(&tls, &addr).await {
        Err(_) => true,
        Ok(mut c) => {
            c.get_manifest(manifest_request(package)).await.is_err()
                && c.fetch_chunks(pb::FetchChunksRequest {
                    content_id,
                    chunks: vec![0],
                })
                .await
                .is_err()
        }
    }
}

/// An agent process whose certificate comes from another CA, and a client
/// with an expired certificate from the fleet CA, each on their own host:
/// the seed and an honest agent on other hosts refuse them both ways and
/// they get 0 bytes, while a valid identity is served over the same links.
#[test]
fn foreign_and_expired_certificates_refused_on_lan() {
    const PKG: &str = "lab/lansec@1";
    const SIZE: u64 = 8 << 20;
    let Some(tb) = testbed("foreign_and_expired_certificates_refused_on_lan", 4) else {
        return;
    };
    let pki = Pki::new();
    let work = tempfile::tempdir().expect("tempdir");
    let content = work.path().join("content");
    std::fs::create_dir_all(&content).expect("mkdir");
    write_random(&content.join("data.bin"), SIZE, b"lansec");
    let signed = pki.package(
        &content,
        "lab/lansec",
        ChunkingSpec::fixed(2 << 20).expect("valid"),
    );
    let manifest = work.path().join("package.manifest");
    std::fs::write(&manifest, signed.encode()).expect("write manifest");
    let content_id = bytes::Bytes::copy_from_slice(signed.content_id().as_bytes());

    // Host 0: the seed; host 1: an honest agent; host 2: the intruder (an
    // agent with another CA's certificate); host 3: raw clients. Every
    // agent knows every other by address.
    let addrs: Vec<String> = tb.hosts[..3].iter().map(addr).collect();
    let seed = agent_on(&pki, work.path(), &tb.hosts[0], "seed", &addrs, None);
    seed.publish(&manifest, &content);
    let honest = agent_on(&pki, work.path(), &tb.hosts[1], "honest", &addrs, None);
    let intruder_tls = foreign_identity(&pki, &work.path().join("foreign"), "intruder");
    let intruder = agent_on(
        &pki,
        work.path(),
        &tb.hosts[2],
        "intruder",
        &addrs,
        Some(intruder_tls.clone()),
    );
    let clients = NsRuntime::new(&tb.hosts[3]).expect("a runtime in the clients' namespace");
    let t = Duration::from_secs(30);

    // A valid identity from host 3 is served: the links work.
    let good = pki.agent_tls("probe", &["lab"]);
    let seed_addr = seed.addr();
    clients
        .run(t, async move {
            let mut c = raw_client(&good, &seed_addr).await?;
            c.get_manifest(manifest_request(PKG))
                .await
                .map_err(|s| s.to_string())
        })
        .expect("a valid certificate is served across the testbed");

    // An expired certificate from the fleet CA, and the intruder's
    // certificate presented by a raw client, to the seed and the honest
    // agent.
    let mut req = IssueRequest::agent("stale", &["lab"], Duration::from_secs(3600));
    req.backdate = Some(Duration::from_secs(3 * 3600));
    let expired = pki.issue(req);
    for (what, tls) in [("an expired", &expired), ("another CA's", &intruder_tls)] {
        for target in [&seed, &honest] {
            let (tls, addr, cid) = (tls.clone(), target.addr(), content_id.clone());
            let no = clients.run(t, async move { refused(tls, addr, cid, PKG).await });
            assert!(no, "{} served {what} certificate", target.id);
        }
    }

    // The intruder agent cannot even resolve the package.
    let run = intruder.shoal(&["fetch", PKG]);
    assert_ne!(
        run.code, 0,
        "the intruder fetched: {}{}",
        run.stdout, run.stderr
    );
    eprintln!("intruder: fetch refused: {}", run.stderr.trim());
    assert_eq!(seed.status_u64("bytes_sent"), 0, "the seed sent chunks");

    // The honest agent, which also knows the intruder, completes.
    fetch(&honest, PKG);
    wait_complete(&[&honest], PKG, SIZE, Duration::from_secs(60));
    assert_eq!(
        tree_hashes(&stable_path(&honest, PKG)),
        tree_hashes(&content)
    );
    // Now two agents hold it: still nothing for the intruder.
    let run = intruder.shoal(&["fetch", PKG]);
    assert_ne!(
        run.code, 0,
        "the intruder fetched: {}{}",
        run.stdout, run.stderr
    );
    assert_eq!(intruder.bytes_done(PKG), 0);
    assert_eq!(intruder.package_state(PKG), None, "the intruder stored it");
    assert_eq!(intruder.status_u64("bytes_received"), 0);
    assert_eq!(honest.status_u64("bytes_sent"), 0, "the honest agent sent");
    assert!(
        honest.status_u64("bytes_received") >= SIZE,
        "the honest agent got {} bytes",
        honest.status_u64("bytes_received")
    );
    // The refusals are in the logs of the hosts refusing.
    for (a, from) in [
        (&seed, &tb.hosts[2]),
        (&seed, &tb.hosts[3]),
        (&honest, &tb.hosts[2]),
    ] {
        let needle = format!("{}:", from.ip);
        assert!(
            a.log()
                .lines()
                .any(|l| l.contains("TLS handshake refused") && l.contains(&needle)),
            "{}: no refusal of {} logged; log:\n{}",
            a.id,
            from.ip,
            a.log()
        );
    }
    drop(clients);
}

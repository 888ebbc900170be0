//! The agent's `/metrics`: real Prometheus text exposition from running
//! agents. After one agent fetches a package from a seed, the counters say
//! what moved (bytes from the origin, chunks verified, bytes sent); an
//! agent holding 20 packages stays under 200 series; names follow the
//! conventions (`shoal_` prefix, no chunk or peer ids in labels).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use shoal_agent::agent::Agent;
use shoal_proto::chunking::ChunkingSpec;
use shoal_proto::pb;
use shoal_tests::swarm::{Pki, connect_all, eventually};
use shoal_tests::write_random;

/// `GET /metrics` over plain HTTP/1.1; the body.
fn scrape(addr: SocketAddr) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to /metrics");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("response");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain"),
        "{head}"
    );
    body.to_owned()
}

/// Series (`name{labels}` → value) of an exposition.
fn series(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_what_moved_and_stay_small() {
    let pki = Pki::new();
    let work = tempfile::tempdir().expect("tempdir");
    let start = |id: &str| {
        let mut c = pki.config(id, &work.path().join(id));
        c.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
        Agent::start(c)
    };
    let seed = start("seed").await.expect("seed starts");
    let pc = start("pc").await.expect("pc starts");
    connect_all(&[&seed, &pc]);

    // Twenty packages on the seed, 1 MiB each, 256 KiB chunks.
    let mut ids = Vec::new();
    for i in 0..20 {
        let content = work.path().join(format!("pkg-{i}"));
        std::fs::create_dir_all(&content).expect("mkdir");
        write_random(&content.join("f.bin"), 1 << 20, format!("p{i}").as_bytes());
        let signed = pki.package(
            &content,
            &format!("lab/pkg-{i}"),
            ChunkingSpec::fixed(256 << 10).expect("valid"),
        );
        ids.push(seed.publish(&signed, &content).await.expect("publish").id);
    }
    let api = shoal_agent::local_api::LocalApi {
        ctx: pc.context().clone(),
        transfers: pc.transfers().clone(),
        listen_addrs: vec![],
        started: std::time::Instant::now(),
    };
    use pb::local_control_server::LocalControl;
    api.fetch(tonic::Request::new(pb::FetchRequest {
        package: "lab/pkg-0@1".into(),
        priority: 0,
        pin: false,
    }))
    .await
    .expect("fetch accepted");
    eventually(Duration::from_secs(60), "the fetch to complete", || {
        pc.context()
            .store
            .get(&ids[0])
            .is_some_and(|p| p.record().state == shoal_agent::store::PackageState::Complete)
    })
    .await;

    let pc_addr = pc.metrics_addr().expect("pc serves metrics");
    let seed_addr = seed.metrics_addr().expect("seed serves metrics");
    let (pc_text, seed_text) =
        tokio::task::spawn_blocking(move || (scrape(pc_addr), scrape(seed_addr)))
            .await
            .expect("scrape");
    let pc_m = series(&pc_text);
    let seed_m = series(&seed_text);
    let get = |m: &BTreeMap<String, f64>, k: &str| {
        *m.get(k).unwrap_or_else(|| {
            panic!(
                "no series {k} in:\n{}",
                m.keys().cloned().collect::<Vec<_>>().join("\n")
            )
        })
    };
    assert_eq!(
        get(
            &pc_m,
            r#"shoal_agent_received_bytes_total{source="origin"}"#
        ),
        (1 << 20) as f64
    );
    assert_eq!(
        get(&pc_m, r#"shoal_agent_received_bytes_total{source="peer"}"#),
        0.0
    );
    assert_eq!(get(&pc_m, "shoal_agent_chunks_verified_total"), 4.0);
    assert_eq!(get(&pc_m, "shoal_agent_chunks_rejected_total"), 0.0);
    assert_eq!(
        get(&pc_m, "shoal_agent_chunk_fetch_duration_seconds_count"),
        4.0
    );
    assert_eq!(
        get(
            &pc_m,
            r#"shoal_agent_package_progress_ratio{package="lab/pkg-0@1"}"#
        ),
        1.0
    );
    assert_eq!(get(&pc_m, r#"shoal_agent_packages{state="complete"}"#), 1.0);
    assert_eq!(get(&pc_m, "shoal_agent_store_used_bytes"), (1 << 20) as f64);
    assert!(get(&pc_m, r#"shoal_agent_peers{source="static"}"#) >= 1.0);
    assert!(get(&seed_m, "shoal_agent_sent_bytes_total") >= (1 << 20) as f64);
    assert_eq!(
        get(&seed_m, r#"shoal_agent_packages{state="complete"}"#),
        20.0
    );
    assert!(
        get(&seed_m, "shoal_agent_certificate_expiry_timestamp_seconds") > 1.7e9,
        "a Unix time"
    );

    // Bounded: the seed holds 20 packages and still has under 200 series,
    // every name is ours, and no label carries a chunk index or peer id.
    assert!(seed_m.len() < 200, "{} series:\n{seed_text}", seed_m.len());
    for name in seed_m.keys() {
        assert!(name.starts_with("shoal_agent_"), "{name}");
        assert!(
            !name.contains("chunk=") && !name.contains("peer="),
            "{name}"
        );
    }
    for line in seed_text.lines().filter(|l| l.starts_with("# TYPE")) {
        let mut parts = line.split_whitespace().skip(2);
        let (name, kind) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if kind == "counter" {
            assert!(name.ends_with("_total"), "counter {name} lacks _total");
        }
    }

    pc.shutdown().await;
    seed.shutdown().await;
}

//! `kill -9` mid-transfer loses at most the chunks in flight: two agents
//! killed at about half way and restarted finish without fetching again
//! what they had verified, and end bit-identical. Real processes, real
//! sled, real files.

use std::time::{Duration, Instant};

use shoal_proto::chunking::ChunkingSpec;
use shoal_tests::process::AgentProcess;
use shoal_tests::swarm::{Pki, tree_hashes};

const SIZE: u64 = 96 << 20;
/// What may be fetched twice: requests in flight at the kill (4 per peer
/// of up to 4 MiB) plus bitfield updates not yet flushed.
const SLACK: u64 = 24 << 20;

fn bytes_done(a: &AgentProcess, package: &str) -> u64 {
    let run = a.shoal(&["list", "--json"]);
    if run.code != 0 {
        return 0;
    }
    run.json()
        .as_array()
        .and_then(|l| {
            l.iter()
                .find(|p| {
                    format!(
                        "{}@{}",
                        p["name"].as_str().unwrap_or(""),
                        p["version"].as_str().unwrap_or("")
                    ) == package
                })
                .cloned()
        })
        .and_then(|p| p["bytes_done"].as_u64())
        .unwrap_or(0)
}

#[test]
fn killed_agents_resume_without_refetching() {
    let pki = Pki::new();
    let work = tempfile::tempdir().expect("tempdir");
    let (content, manifest_path) = pki.write_package(
        work.path(),
        "lab/resume",
        SIZE,
        ChunkingSpec::fixed(1 << 20).expect("valid"),
    );

    // The seed uploads at 24 MiB/s so the transfer takes a few seconds.
    let seed = AgentProcess::start(
        &pki,
        "seed",
        &work.path().join("seed"),
        &[],
        "limits:\n  upload_rate: 24MiB/s",
    );
    seed.publish(&manifest_path, &content);

    let mut agents: Vec<AgentProcess> = ["agent-a", "agent-b"]
        .iter()
        .map(|id| AgentProcess::start(&pki, id, &work.path().join(id), &[seed.addr()], ""))
        .collect();
    for a in &agents {
        let run = a.shoal(&["fetch", "lab/resume@1"]);
        assert_eq!(run.code, 0, "fetch: {}{}", run.stdout, run.stderr);
    }

    // Kill each at about half way.
    let mut before = Vec::new();
    for a in &mut agents {
        let deadline = Instant::now() + Duration::from_secs(60);
        let done = loop {
            let d = bytes_done(a, "lab/resume@1");
            if d >= SIZE / 2 {
                break d;
            }
            assert!(d < SIZE, "{} finished before it could be killed", a.id);
            assert!(
                Instant::now() < deadline,
                "{} made no progress; log:\n{}",
                a.id,
                a.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        a.kill9();
        before.push(done);
    }
    for a in &mut agents {
        a.restart();
    }

    // Both resume on their own and complete.
    for (a, held) in agents.iter().zip(&before) {
        let run = a.shoal(&["fetch", "lab/resume@1", "--wait", "--json"]);
        assert_eq!(
            run.code,
            0,
            "{}: {}{}\nlog:\n{}",
            a.id,
            run.stdout,
            run.stderr,
            a.log()
        );
        let status = a.shoal(&["status", "--json"]).json();
        let received = status["bytes_received"].as_u64().expect("bytes_received");
        eprintln!(
            "{}: held {} MiB at the kill, fetched {} MiB after restart",
            a.id,
            held >> 20,
            received >> 20
        );
        assert!(
            received <= SIZE - held + SLACK,
            "{} fetched {received} bytes after restart but held {held} of {SIZE} before the kill",
            a.id
        );
        let path = a.dir.join("data/packages/lab_resume@1");
        assert_eq!(
            tree_hashes(&path),
            tree_hashes(&content),
            "{} differs",
            a.id
        );
        assert!(
            a.log().contains("restored package"),
            "{}: no resume in the log",
            a.id
        );
        if std::env::var_os("SHOW_LOG").is_some() {
            eprintln!("{}", a.log());
        }
    }
}

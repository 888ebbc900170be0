//! Multi-host on a network-namespace LAN: nine hosts, 100 Mbit/s links,
//! discovery by mDNS alone (no static peers). A seed and eight agents: all
//! find each other, all complete, all bit-identical. Skips with a message
//! where namespaces cannot be made (needs root; CI runs as root).

use std::time::{Duration, Instant};

use shoal_proto::chunking::ChunkingSpec;
use shoal_tests::netns::{Testbed, unavailable};
use shoal_tests::process::{start_on_testbed, wait_for_peers};
use shoal_tests::swarm::{Pki, tree_hashes};

const HOSTS: usize = 9;
const SIZE: u64 = 64 << 20;

#[test]
fn seed_and_eight_agents_found_by_mdns_alone() {
    if let Some(why) = unavailable() {
        eprintln!("SKIPPED seed_and_eight_agents_found_by_mdns_alone: {why}");
        return;
    }
    let tb = Testbed::new(HOSTS, Some("100mbit")).expect("testbed");
    let pki = Pki::new();
    let work = tempfile::tempdir().expect("tempdir");
    let (content, manifest) = pki.write_package(
        work.path(),
        "lab/lan",
        SIZE,
        ChunkingSpec::fixed(4 << 20).expect("valid"),
    );
    let agents = start_on_testbed(&pki, &tb, work.path());
    agents[0].publish(&manifest, &content);

    // Discovery: everyone sees everyone else through mDNS.
    let discovery = Instant::now();
    wait_for_peers(&agents, HOSTS - 1, Some("mdns"), Duration::from_secs(60));
    eprintln!(
        "mDNS: every agent saw all {} others after {:.1} s",
        HOSTS - 1,
        discovery.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    for a in &agents[1..] {
        let run = a.shoal(&["fetch", "lab/lan@1"]);
        assert_eq!(run.code, 0, "{}: {}{}", a.id, run.stdout, run.stderr);
    }
    for a in &agents[1..] {
        let run = a.shoal(&["fetch", "lab/lan@1", "--wait", "--json"]);
        assert_eq!(
            run.code,
            0,
            "{}: {}{}\nlog:\n{}",
            a.id,
            run.stdout,
            run.stderr,
            a.log()
        );
    }
    let secs = started.elapsed().as_secs_f64();
    let ideal = SIZE as f64 * 8.0 / 100e6;
    let seed_sent = agents[0].shoal(&["status", "--json"]).json()["bytes_sent"]
        .as_u64()
        .unwrap_or(0);
    eprintln!(
        "{} agents, {} MiB over 100 Mbit/s links: {secs:.1} s ({:.2} x ideal), seed sent {:.2} copies",
        HOSTS - 1,
        SIZE >> 20,
        secs / ideal,
        seed_sent as f64 / SIZE as f64
    );
    let expected = tree_hashes(&content);
    for a in &agents[1..] {
        assert_eq!(
            tree_hashes(&a.dir.join("data/packages/lab_lan@1")),
            expected,
            "{} differs",
            a.id
        );
    }
}

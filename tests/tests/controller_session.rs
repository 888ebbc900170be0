//! Agent sessions with a real controller: agents that know nothing of
//! each other (no mDNS, no static peers) find each other through the
//! controller's roster; a revocation reaches the running swarm and the
//! revoked agent gets nothing more; with the controller down, an agent
//! restarted from its persisted roster still finds its peers.

use std::path::Path;
use std::time::{Duration, Instant};

use shoal_agent::config::TlsPaths;
use shoal_proto::chunking::ChunkingSpec;
use shoal_tests::controller::{ControllerProcess, enroll, start_agent, wait_until};
use shoal_tests::swarm::{Pki, tree_hashes};

fn enrolled(ctl: &ControllerProcess, token: &str, fp: &str, host: &str, dir: &Path) -> TlsPaths {
    let (run, tls) = enroll(&ctl.addr, token, fp, host, dir);
    assert_eq!(run.code, 0, "{host}: {}{}", run.stdout, run.stderr);
    tls
}

fn online(ctl: &ControllerProcess) -> Vec<String> {
    let list = ctl.cli(&["agents", "list", "--json"]);
    if list.code != 0 {
        return Vec::new();
    }
    list.json()
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|x| x["online"] == true)
                .filter_map(|x| x["agent_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn roster_discovery_revocation_and_running_without_the_controller() {
    let work = tempfile::tempdir().expect("tempdir");
    let mut ctl = ControllerProcess::start(&work.path().join("controller"));
    let fp = ctl.fingerprint();
    let token = ctl.token(&["lab"], "1h", 3);
    let pki = Pki::new();
    let mut tls = ["seed", "pc", "victim"]
        .map(|h| enrolled(&ctl, &token, &fp, h, &work.path().join(format!("{h}-id"))))
        .into_iter();
    let seed = start_agent(
        &pki,
        &ctl,
        "seed",
        &work.path().join("seed"),
        tls.next().expect("tls"),
    );
    let mut pc = start_agent(
        &pki,
        &ctl,
        "pc",
        &work.path().join("pc"),
        tls.next().expect("tls"),
    );
    let victim = start_agent(
        &pki,
        &ctl,
        "victim",
        &work.path().join("victim"),
        tls.next().expect("tls"),
    );

    wait_until("all three online", Duration::from_secs(30), || {
        online(&ctl).len() == 3
    });
    // Rosters follow the agents' first reports by a moment.
    for a in [&seed, &pc, &victim] {
        wait_until(
            &format!("{}'s roster", a.id),
            Duration::from_secs(30),
            || {
                let peers = a.shoal(&["peers", "--json"]).json();
                peers
                    .as_array()
                    .is_some_and(|l| l.iter().filter(|p| p["source"] == "roster").count() >= 2)
            },
        );
    }

    // The roster is the only way these agents can know each other.
    let (content, manifest) = pki.write_package(
        work.path(),
        "lab/roster",
        8 << 20,
        ChunkingSpec::fixed(1 << 20).expect("valid"),
    );
    seed.publish(&manifest, &content);
    for a in [&pc, &victim] {
        let run = a.shoal(&["fetch", "lab/roster@1", "--wait", "--json"]);
        assert_eq!(
            run.code,
            0,
            "{}: {}{}\n{}",
            a.id,
            run.stdout,
            run.stderr,
            a.log()
        );
        assert_eq!(
            tree_hashes(&a.dir.join("data/packages/lab_roster@1")),
            tree_hashes(&content)
        );
    }

    // Revoke the victim: its session ends and the others refuse it.
    let revoked_at = Instant::now();
    let run = ctl.cli(&["agents", "revoke", "victim", "--reason", "test"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    wait_until(
        "the victim's session to end",
        Duration::from_secs(30),
        || !online(&ctl).contains(&"victim".to_owned()),
    );
    let work2 = work.path().join("second");
    std::fs::create_dir_all(&work2).expect("mkdir");
    let (content2, manifest2) = pki.write_package(
        &work2,
        "lab/after",
        8 << 20,
        ChunkingSpec::fixed(1 << 20).expect("valid"),
    );
    seed.publish(&manifest2, &content2);
    // The pc still gets new content; the victim gets none, from anyone.
    let run = pc.shoal(&["fetch", "lab/after@1", "--wait", "--json"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let _ = victim.shoal(&["fetch", "lab/after@1"]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        victim.bytes_done("lab/after@1"),
        0,
        "a revoked agent got content"
    );
    eprintln!(
        "revocation took effect within {:.1} s",
        revoked_at.elapsed().as_secs_f64()
    );

    // Controller down: the pc restarts from its saved roster and still
    // fetches from the seed.
    ctl.kill9();
    pc.kill9();
    pc.restart();
    let work3 = work.path().join("third");
    std::fs::create_dir_all(&work3).expect("mkdir");
    let (content3, manifest3) = pki.write_package(
        &work3,
        "lab/offline",
        4 << 20,
        ChunkingSpec::fixed(1 << 20).expect("valid"),
    );
    seed.publish(&manifest3, &content3);
    let run = pc.shoal(&["fetch", "lab/offline@1", "--wait", "--json"]);
    assert_eq!(
        run.code,
        0,
        "without the controller: {}{}\n{}",
        run.stdout,
        run.stderr,
        pc.log()
    );
    assert_eq!(
        tree_hashes(&pc.dir.join("data/packages/lab_offline@1")),
        tree_hashes(&content3)
    );
}

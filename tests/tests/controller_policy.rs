//! Policies with a real controller: a download limit applied to one group
//! slows that group's agents and not the others, agents report the
//! version they run, and a bad policy file is refused (exit 65) with
//! nothing applied.

use std::path::Path;
use std::time::{Duration, Instant};

use shoal_agent::config::TlsPaths;
use shoal_proto::chunking::ChunkingSpec;
use shoal_tests::controller::{ControllerProcess, enroll, start_agent, wait_until};
use shoal_tests::process::AgentProcess;
use shoal_tests::swarm::Pki;

fn enrolled(ctl: &ControllerProcess, group: &str, host: &str, dir: &Path) -> TlsPaths {
    let token = ctl.token(&[group], "1h", 1);
    let (run, tls) = enroll(&ctl.addr, &token, &ctl.fingerprint(), host, dir);
    assert_eq!(run.code, 0, "{host}: {}{}", run.stdout, run.stderr);
    tls
}

fn start(pki: &Pki, ctl: &ControllerProcess, id: &str, work: &Path, group: &str) -> AgentProcess {
    let tls = enrolled(ctl, group, id, &work.join(format!("{id}-id")));
    start_agent(pki, ctl, id, &work.join(id), tls)
}

/// `agent_id` -> (online, policy_version).
fn agents(ctl: &ControllerProcess) -> Vec<(String, bool, u64)> {
    let list = ctl.cli(&["agents", "list", "--json"]);
    if list.code != 0 {
        return Vec::new();
    }
    list.json()
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    (
                        x["agent_id"].as_str().unwrap_or_default().to_owned(),
                        x["online"] == true,
                        x["policy_version"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn fetch_secs(a: &AgentProcess, package: &str) -> f64 {
    let started = Instant::now();
    let run = a.shoal(&["fetch", package, "--wait", "--json"]);
    assert_eq!(
        run.code,
        0,
        "{}: {}{}\n{}",
        a.id,
        run.stdout,
        run.stderr,
        a.log()
    );
    started.elapsed().as_secs_f64()
}

#[test]
fn a_group_download_limit_slows_that_group_only() {
    let work = tempfile::tempdir().expect("tempdir");
    let ctl = ControllerProcess::start(&work.path().join("controller"));
    let pki = Pki::new();
    let seed = start(&pki, &ctl, "seed", work.path(), "seeds");
    let slow = start(&pki, &ctl, "slow-pc", work.path(), "slow");
    let fast = start(&pki, &ctl, "fast-pc", work.path(), "fast");
    wait_until("all three online", Duration::from_secs(30), || {
        agents(&ctl).iter().filter(|a| a.1).count() == 3
    });

    // Refused: a bad rate and an unknown group; nothing is stored.
    let bad = work.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "name: broken\ntarget: {groups: [slow]}\nlimits: {download_rate: very-fast}\n",
    )
    .expect("write");
    let run = ctl.cli(&["apply", "-f", bad.to_str().expect("utf-8")]);
    assert_eq!(run.code, 65, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("field limits.download_rate, line 3"),
        "{}",
        run.stderr
    );
    std::fs::write(&bad, "name: ghost\ntarget: {groups: [nobody]}\n").expect("write");
    let run = ctl.cli(&["apply", "-f", bad.to_str().expect("utf-8")]);
    assert_eq!(run.code, 65, "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("unknown group"), "{}", run.stderr);
    let get = ctl.cli(&["get", "policy", "--json"]);
    assert_eq!(get.code, 0, "{}", get.stderr);
    assert_eq!(get.json()["version"], 0, "nothing applied");

    // The policy: group slow downloads at 8 Mbit/s (1 MB/s).
    let good = work.path().join("slow.yaml");
    std::fs::write(
        &good,
        "# the slow lab\nname: slow-lab\ntarget: {groups: [slow]}\npriority: 5\nlimits: {download_rate: 8Mbit/s}\n",
    )
    .expect("write");
    let run = ctl.cli(&["apply", "-f", good.to_str().expect("utf-8"), "--json"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let version = run.json()["version"].as_u64().expect("version");
    assert_eq!(version, 1);
    wait_until(
        "the slow agent to run the policy",
        Duration::from_secs(30),
        || {
            agents(&ctl)
                .iter()
                .any(|a| a.0 == "slow-pc" && a.2 == version)
        },
    );
    let get = ctl.cli(&["get", "policy", "slow-lab", "--json"]);
    assert_eq!(get.code, 0, "{}", get.stderr);
    assert_eq!(get.json()["version"], version);
    assert!(
        get.json()["yaml"]
            .as_str()
            .is_some_and(|y| y.contains("8Mbit/s"))
    );

    // A bad file now leaves version 1 in force.
    let run = ctl.cli(&["apply", "-f", bad.to_str().expect("utf-8")]);
    assert_eq!(run.code, 65, "{}{}", run.stdout, run.stderr);
    assert_eq!(
        ctl.cli(&["get", "policy", "--json"]).json()["version"],
        version
    );

    let (content, manifest) = pki.write_package(
        work.path(),
        "lab/policy",
        16 << 20,
        ChunkingSpec::fixed(1 << 20).expect("valid"),
    );
    seed.publish(&manifest, &content);
    let fast_secs = fetch_secs(&fast, "lab/policy@1");
    let slow_secs = fetch_secs(&slow, "lab/policy@1");
    let floor = (16u64 << 20) as f64 / 1e6 * 0.6;
    assert!(
        slow_secs >= floor,
        "the slow agent took {slow_secs:.1}s, expected at least {floor:.1}s"
    );
    assert!(
        fast_secs * 2.0 < slow_secs,
        "fast {fast_secs:.1}s vs slow {slow_secs:.1}s"
    );
}

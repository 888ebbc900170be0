//! Enrollment end to end through the real binaries: `shoal-controller
//! token create`, `shoal-agent enroll`. Tokens are used at most `--uses`
//! times and not after they expire; a wrong CA fingerprint is refused
//! before the token is sent; enrolled certificates carry the token's
//! groups and work for swarming; every admin call is audited and roles
//! are enforced.

use std::time::Duration;

use shoal_proto::chunking::ChunkingSpec;
use shoal_tests::controller::{ControllerProcess, enroll};
use shoal_tests::process::{AgentOptions, AgentProcess};
use shoal_tests::swarm::{Pki, tree_hashes};

/// EX_NOPERM, as `shoal-agent enroll` reports refusals.
const EXIT_NOPERM: i32 = 77;

#[test]
fn enrollment_tokens_fingerprints_and_enrolled_agents_swarm() {
    let work = tempfile::tempdir().expect("tempdir");
    let ctl = ControllerProcess::start(&work.path().join("controller"));
    let fp = ctl.fingerprint();

    // Two uses: two agents enroll, the third attempt is refused.
    let token = ctl.token(&["lab"], "1h", 2);
    let (seed_run, seed_tls) = enroll(
        &ctl.addr,
        &token,
        &fp,
        "seed-host",
        &work.path().join("seed"),
    );
    assert_eq!(seed_run.code, 0, "{}{}", seed_run.stdout, seed_run.stderr);
    let seed_id = seed_run.json()["agent_id"]
        .as_str()
        .expect("agent_id")
        .to_owned();
    assert_eq!(seed_id, "seed-host");
    assert_eq!(seed_run.json()["groups"], serde_json::json!(["lab"]));
    let (pc_run, pc_tls) = enroll(
        &ctl.addr,
        &token,
        &fp,
        "Lab-PC.example.org",
        &work.path().join("pc"),
    );
    assert_eq!(pc_run.code, 0, "{}{}", pc_run.stdout, pc_run.stderr);
    let pc_id = pc_run.json()["agent_id"]
        .as_str()
        .expect("agent_id")
        .to_owned();
    assert_eq!(pc_id, "lab-pc");
    let (third, _) = enroll(&ctl.addr, &token, &fp, "third", &work.path().join("third"));
    assert_eq!(third.code, EXIT_NOPERM, "{}{}", third.stdout, third.stderr);
    assert!(third.stderr.contains("no uses left"), "{}", third.stderr);

    // An expired token is refused.
    let short = ctl.token(&["lab"], "1s", 5);
    std::thread::sleep(Duration::from_millis(1500));
    let (expired, _) = enroll(&ctl.addr, &short, &fp, "late", &work.path().join("late"));
    assert_eq!(
        expired.code, EXIT_NOPERM,
        "{}{}",
        expired.stdout, expired.stderr
    );
    assert!(expired.stderr.contains("expired"), "{}", expired.stderr);

    // A wrong CA fingerprint: refused, and the token is not spent.
    let spare = ctl.token(&["lab"], "1h", 1);
    let wrong = "00".repeat(32);
    let (pinned, _) = enroll(
        &ctl.addr,
        &spare,
        &wrong,
        "pinned",
        &work.path().join("pinned"),
    );
    assert_eq!(
        pinned.code, EXIT_NOPERM,
        "{}{}",
        pinned.stdout, pinned.stderr
    );
    assert!(
        pinned.stderr.to_lowercase().contains("fingerprint"),
        "{}",
        pinned.stderr
    );
    let (ok, _) = enroll(
        &ctl.addr,
        &spare,
        &fp,
        "pinned",
        &work.path().join("pinned2"),
    );
    assert_eq!(
        ok.code, 0,
        "the token survives a refused handshake: {}",
        ok.stderr
    );

    // The controller lists them with their groups.
    let list = ctl.cli(&["agents", "list", "--json"]).json();
    let ids: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|a| a["agent_id"].as_str())
        .collect();
    for id in [seed_id.as_str(), pc_id.as_str(), "pinned"] {
        assert!(ids.contains(&id), "{id} missing from {list}");
    }
    assert!(!ids.contains(&"third") && !ids.contains(&"late"), "{list}");

    // The enrolled identities swarm: the seed publishes, the PC fetches.
    let pki = Pki::new();
    let (content, manifest) = pki.write_package(
        work.path(),
        "lab/enrolled",
        8 << 20,
        ChunkingSpec::fixed(1 << 20).expect("valid"),
    );
    let seed = AgentProcess::start_with(
        &pki,
        &seed_id,
        &work.path().join("seed-run"),
        AgentOptions {
            tls: Some(seed_tls),
            ..Default::default()
        },
    );
    seed.publish(&manifest, &content);
    let pc = AgentProcess::start_with(
        &pki,
        &pc_id,
        &work.path().join("pc-run"),
        AgentOptions {
            tls: Some(pc_tls),
            static_peers: vec![seed.addr()],
            ..Default::default()
        },
    );
    let run = pc.shoal(&["fetch", "lab/enrolled@1", "--wait", "--json"]);
    assert_eq!(run.code, 0, "{}{}\n{}", run.stdout, run.stderr, pc.log());
    let got = pc.dir.join("data/packages/lab_enrolled@1");
    assert_eq!(tree_hashes(&got), tree_hashes(&content));

    // Every admin call so far is in the audit log, by the admin identity.
    let audit = ctl.cli(&["audit", "--json"]);
    assert_eq!(audit.code, 0, "{}", audit.stderr);
    let creates = audit
        .stdout
        .lines()
        .filter(|l| l.contains("\"token.create\""))
        .count();
    assert_eq!(creates, 3, "{}", audit.stdout);
    assert!(
        audit.stdout.contains("\"actor\":\"admin\""),
        "{}",
        audit.stdout
    );
}

#[test]
fn revocation_and_roles() {
    let work = tempfile::tempdir().expect("tempdir");
    let mut ctl = ControllerProcess::start(&work.path().join("controller"));
    let fp = ctl.fingerprint();
    let token = ctl.token(&["lab"], "1h", 1);
    let (run, tls) = enroll(
        &ctl.addr,
        &token,
        &fp,
        "victim",
        &work.path().join("victim"),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);

    // An agent certificate is no admin identity: refused and audited.
    let dir = tls
        .cert
        .parent()
        .expect("dir")
        .to_str()
        .expect("utf-8")
        .to_owned();
    let denied = ctl.cli(&[
        "--identity",
        &dir,
        "--name",
        "agent",
        "token",
        "create",
        "--group",
        "lab",
    ]);
    assert_eq!(
        denied.code, EXIT_NOPERM,
        "{}{}",
        denied.stdout, denied.stderr
    );
    assert!(
        denied.stderr.contains("may not token.create"),
        "{}",
        denied.stderr
    );

    let revoke = ctl.cli(&["agents", "revoke", "victim", "--reason", "stolen laptop"]);
    assert_eq!(revoke.code, 0, "{}", revoke.stderr);
    let unknown = ctl.cli(&["agents", "revoke", "nobody"]);
    assert_ne!(unknown.code, 0);
    assert!(
        unknown.stderr.contains("no agent \"nobody\""),
        "{}",
        unknown.stderr
    );

    // Acknowledged changes survive kill -9.
    ctl.kill9();
    ctl.restart();
    let list = ctl.cli(&["agents", "list", "--json"]).json();
    let victim = list
        .as_array()
        .expect("array")
        .iter()
        .find(|a| a["agent_id"] == "victim")
        .expect("victim listed");
    assert_eq!(victim["revoked"], true, "{list}");
    let audit = ctl.cli(&["audit", "--json", "--actor", "victim"]);
    assert!(
        audit.stdout.contains("\"allowed\":false"),
        "the refusal is audited: {}",
        audit.stdout
    );
}

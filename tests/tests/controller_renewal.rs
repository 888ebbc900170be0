//! Certificates renew themselves: with 90 s agent certificates, running
//! agents get new ones over their sessions (a new serial at the
//! controller, new files on disk) and keep exchanging content after the
//! certificates they started with have expired.

use std::time::{Duration, Instant};

use shoal_agent::config::TlsPaths;
use shoal_proto::chunking::ChunkingSpec;
use shoal_tests::controller::{ControllerProcess, enroll, start_agent, wait_until};
use shoal_tests::swarm::{Pki, tree_hashes};

fn serials(ctl: &ControllerProcess) -> Vec<(String, String)> {
    let run = ctl.cli(&["agents", "list", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    run.json()
        .as_array()
        .expect("agents")
        .iter()
        .map(|a| {
            (
                a["agent_id"].as_str().unwrap_or_default().to_owned(),
                a["certificate_serial"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

#[test]
fn agents_renew_before_expiry_and_keep_working_after_it() {
    let work = tempfile::tempdir().expect("tempdir");
    let mut ctl = ControllerProcess::configure(&work.path().join("controller"));
    let mut yaml = std::fs::read_to_string(&ctl.config).expect("config");
    yaml.push_str("agent_cert_validity: 90s\n");
    std::fs::write(&ctl.config, yaml).expect("config");
    ctl.restart();
    let fp = ctl.fingerprint();
    let token = ctl.token(&["lab"], "1h", 2);
    let enrolled_at = Instant::now();
    let tls: Vec<TlsPaths> = ["seed", "pc"]
        .iter()
        .map(|h| {
            let (run, tls) = enroll(
                &ctl.addr,
                &token,
                &fp,
                h,
                &work.path().join(format!("{h}-id")),
            );
            assert_eq!(run.code, 0, "{h}: {}{}", run.stdout, run.stderr);
            tls
        })
        .collect();
    let first = serials(&ctl);
    let first_pem = std::fs::read(&tls[1].cert).expect("cert");
    let dir = |h: &str| work.path().join(h);
    let pki = Pki::new();
    let seed = start_agent(&pki, &ctl, "seed", &dir("seed"), tls[0].clone());
    let pc = start_agent(&pki, &ctl, "pc", &dir("pc"), tls[1].clone());

    // The controller records a new serial when it issues the certificate,
    // a moment before the agent has written it: wait for both.
    wait_until("both agents renewed", Duration::from_secs(85), || {
        let now = serials(&ctl);
        now.len() == 2
            && now.iter().all(|s| !first.contains(s))
            && std::fs::read(&tls[1].cert).is_ok_and(|pem| pem != first_pem)
            && pc.log().contains("certificate renewed")
    });

    // Past the first certificates' expiry: 90 s after enrollment.
    let expiry = Duration::from_secs(95);
    if let Some(left) = expiry.checked_sub(enrolled_at.elapsed()) {
        std::thread::sleep(left);
    }
    let pkg = work.path().join("pkg");
    std::fs::create_dir_all(&pkg).expect("mkdir");
    let (content, manifest) = pki.write_package(
        &pkg,
        "lab/renewed",
        8 << 20,
        ChunkingSpec::fixed(1 << 20).expect("valid"),
    );
    seed.publish(&manifest, &content);
    let run = pc.shoal(&["fetch", "lab/renewed@1", "--wait", "--json"]);
    assert_eq!(
        run.code,
        0,
        "after expiry: {}{}\n{}",
        run.stdout,
        run.stderr,
        pc.log()
    );
    assert_eq!(
        tree_hashes(&pc.dir.join("data/packages/lab_renewed@1")),
        tree_hashes(&content)
    );
}

//! Backup while serving and restore: the restored controller has the same
//! CA, agents, revocations and audit log; a damaged backup or a non-empty
//! target is refused clearly.

use std::time::{Duration, Instant};

use shoal_tests::controller::{ControllerProcess, enroll};

/// Enrolled agents as `agents list --json` shows them, minus liveness.
fn agents(ctl: &ControllerProcess) -> Vec<serde_json::Value> {
    let run = ctl.cli(&["agents", "list", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let mut v: Vec<serde_json::Value> = run.json().as_array().expect("array").clone();
    for a in &mut v {
        if let Some(o) = a.as_object_mut() {
            o.remove("online");
            o.remove("last_seen_unix_ms");
        }
    }
    v
}

#[test]
fn backup_while_serving_restores_the_same_state() {
    let work = tempfile::tempdir().expect("tempdir");
    let mut ctl = ControllerProcess::start(&work.path().join("a"));
    let fp = ctl.fingerprint();
    let token = ctl.token(&["lab"], "1h", 3);
    for host in ["one", "two"] {
        let (run, _) = enroll(&ctl.addr, &token, &fp, host, &work.path().join(host));
        assert_eq!(run.code, 0, "{}", run.stderr);
    }
    assert_eq!(ctl.cli(&["agents", "revoke", "two"]).code, 0);

    // Back up while another admin keeps writing (tokens, audit entries).
    let file = work.path().join("controller.backup");
    let stop = Instant::now() + Duration::from_secs(20);
    let backup = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut n = 0;
            while n < 5 && Instant::now() < stop {
                ctl.token(&["lab"], "1h", 1);
                n += 1;
            }
        });
        let run = ctl.cli(&["backup", "--out", file.to_str().expect("utf-8")]);
        writer.join().expect("writer");
        run
    });
    assert_eq!(backup.code, 0, "{}{}", backup.stdout, backup.stderr);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file)
            .expect("backup")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the backup holds the CA key: owner-only");
    }
    let before = agents(&ctl);
    ctl.kill9();

    // Restore into a fresh data directory and serve from it.
    let mut restored = ControllerProcess::configure(&work.path().join("b"));
    let run = restored.cli(&["restore", "--from", file.to_str().expect("utf-8")]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    // The admin identity is not in the backup: the restored controller
    // writes a fresh one from the same CA for this host's operator.
    restored.restart();
    assert_eq!(restored.fingerprint(), fp, "same CA");
    assert_eq!(agents(&restored), before);
    let audit = restored.cli(&["audit", "--json"]);
    assert!(
        audit.stdout.contains("\"agents.revoke\""),
        "{}",
        audit.stdout
    );

    // Restoring over existing state, or a damaged file, is refused.
    let again = restored.cli(&["restore", "--from", file.to_str().expect("utf-8")]);
    assert_eq!(again.code, 73, "{}", again.stderr);
    let mut bytes = std::fs::read(&file).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    let damaged = work.path().join("damaged.backup");
    std::fs::write(&damaged, bytes).expect("write");
    let fresh = ControllerProcess::configure(&work.path().join("c"));
    let bad = fresh.cli(&["restore", "--from", damaged.to_str().expect("utf-8")]);
    assert_eq!(bad.code, 65, "{}", bad.stderr);
    assert!(
        !work.path().join("c/data/state").exists(),
        "nothing restored from a damaged backup"
    );
}

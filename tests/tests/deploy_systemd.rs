//! The systemd units in `deploy/systemd/` pass `systemd-analyze verify`
//! (no warning either: an unknown or misspelt directive is only a warning
//! there) and keep a low exposure in `systemd-analyze security`. The units
//! name /usr/local/bin; the test checks copies that name the binaries just
//! built, since verify insists that ExecStart's program exists.
//!
//! Skips with a message where systemd-analyze is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

const UNITS: [&str; 2] = ["shoal-agent.service", "shoal-controller.service"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn analyze_available() -> bool {
    let ok = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIP: systemd-analyze is not installed (Debian: apt-get install systemd)");
    }
    ok
}

/// Copies of the units with ExecStart and ExecStartPre pointing at the
/// built binaries.
fn units_with_real_binaries(dir: &Path) -> Vec<PathBuf> {
    let bin_dir = shoal_tests::bin("shoal-agent")
        .parent()
        .expect("binary directory")
        .to_owned();
    assert!(shoal_tests::bin("shoal-controller").exists());
    UNITS
        .iter()
        .map(|name| {
            let text = std::fs::read_to_string(repo().join("deploy/systemd").join(name))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                text.contains("ExecStart=/usr/local/bin/"),
                "{name}: ExecStart should run /usr/local/bin/…"
            );
            let copy = dir.join(name);
            std::fs::write(
                &copy,
                text.replace("/usr/local/bin/", &format!("{}/", bin_dir.display())),
            )
            .expect("write unit");
            copy
        })
        .collect()
}

#[test]
fn units_verify_without_warnings() {
    if !analyze_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let units = units_with_real_binaries(dir.path());
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .expect("run systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    // Warnings about the units themselves (unknown keys, bad values) go to
    // stderr with exit 0; nothing may be said about ours.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| UNITS.iter().any(|u| l.contains(u)))
        .collect();
    assert!(ours.is_empty(), "systemd-analyze verify warns:\n{stderr}");
}

#[test]
fn units_are_hardened() {
    if !analyze_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    for unit in units_with_real_binaries(dir.path()) {
        let text = std::fs::read_to_string(&unit).expect("read unit");
        for directive in [
            "User=shoal",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "NoNewPrivileges=yes",
            "CapabilityBoundingSet=\n",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
            "Restart=on-failure",
            "RestartSec=",
            "StateDirectory=shoal",
        ] {
            assert!(
                text.contains(directive),
                "{}: lacks {directive:?}",
                unit.display()
            );
        }
        // Neither daemon reloads its configuration: no ExecReload.
        assert!(!text.contains("ExecReload"), "{}", unit.display());

        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(&unit)
            .output()
            .expect("run systemd-analyze security");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let level: f64 = stdout
            .lines()
            .find_map(|l| {
                l.split_once("Overall exposure level for ")
                    .and_then(|(_, rest)| rest.split_once(": "))
                    .and_then(|(_, n)| n.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or_else(|| {
                panic!(
                    "no exposure level in:\n{stdout}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        assert!(
            level <= 2.5,
            "{}: exposure {level} (want ≤ 2.5):\n{stdout}",
            unit.display()
        );
    }
    let controller = std::fs::read_to_string(dir.path().join("shoal-controller.service"))
        .expect("controller unit");
    assert!(controller.contains("LimitNOFILE=65536"));
    assert!(controller.contains("StateDirectory=shoal-controller"));
}

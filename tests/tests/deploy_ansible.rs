//! The Ansible playbooks and roles (`ansible/`): syntax checks and
//! ansible-lint (production profile), then `site.yml` for real against
//! localhost (connection local) into a scratch prefix: it installs the
//! built binaries, writes agent.yaml, enrolls the agent with a running
//! controller, and a second run changes nothing. The agent then runs on
//! what the role wrote and holds a session with the controller; finally
//! `uninstall.yml` removes what the role installed.
//!
//! Skips with a message when ansible-playbook (or ansible-lint, for that
//! test) is missing; `tests/run-all.sh` installs both when run as root.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shoal_tests::Run;
use shoal_tests::controller::{ControllerProcess, wait_until};
use shoal_tests::process::{free_port, spawn_ready};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// run-all.sh's tools venv (`$SHOAL_TOOLS_VENV`, default
/// /opt/shoal-test-tools/venv) first, then PATH.
fn tool_path() -> String {
    let venv = std::env::var_os("SHOAL_TOOLS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/shoal-test-tools/venv"));
    let path = std::env::var("PATH").unwrap_or_default();
    format!("{}:{path}", venv.join("bin").display())
}

fn have(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .env("PATH", tool_path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!(
            "SKIP: {tool} is not installed; run tests/run-all.sh as root, or \
             pip install ansible-core ansible-lint into $SHOAL_TOOLS_VENV"
        );
    }
    found
}

/// Runs an Ansible command in `ansible/`, bounded by `limit`.
fn ansible(args: &[&str], limit: Duration) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .current_dir(repo().join("ansible"))
        .env("PATH", tool_path())
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_FORCE_COLOR", "0")
        .env("ANSIBLE_STDOUT_CALLBACK", "default")
        .env("ANSIBLE_CONFIG", repo().join("ansible/ansible.cfg"))
        .env("ANSIBLE_LOCAL_TEMP", dir.path().join("tmp"))
        .env("ANSIBLE_REMOTE_TEMP", dir.path().join("remote-tmp"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", args[0]));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{args:?} did not finish in {limit:?}:\n{}",
                std::fs::read_to_string(&out).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    Run {
        code: status.code().unwrap_or(-1),
        stdout: std::fs::read_to_string(&out).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
    }
}

#[test]
fn playbooks_pass_syntax_check_and_lint() {
    if !have("ansible-playbook") {
        return;
    }
    for playbook in ["site.yml", "upgrade.yml", "uninstall.yml"] {
        let run = ansible(
            &[
                "ansible-playbook",
                "-i",
                "inventory/lab.yml",
                "--syntax-check",
                playbook,
            ],
            Duration::from_secs(120),
        );
        assert_eq!(run.code, 0, "{playbook}: {}{}", run.stdout, run.stderr);
    }
    // The example inventory: 40 machines, 20 per room.
    let run = ansible(
        &["ansible-inventory", "-i", "inventory/lab.yml", "--list"],
        Duration::from_secs(120),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let inv = run.json();
    for group in ["lab_a", "lab_b"] {
        assert_eq!(
            inv[group]["hosts"].as_array().map(Vec::len),
            Some(20),
            "{group}"
        );
    }
    if !have("ansible-lint") {
        return;
    }
    let run = ansible(&["ansible-lint", "--nocolor"], Duration::from_secs(300));
    let _ = std::fs::remove_dir_all(repo().join("ansible/.ansible"));
    assert_eq!(run.code, 0, "ansible-lint:\n{}{}", run.stdout, run.stderr);
}

/// `changed=N` of the one host in a PLAY RECAP.
fn changed(recap: &str) -> u64 {
    let line = recap
        .lines()
        .rev()
        .find(|l| l.starts_with("localhost") && l.contains("changed="))
        .unwrap_or_else(|| panic!("no recap in:\n{recap}"));
    assert!(line.contains("failed=0"), "{line}");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("changed="))
        .and_then(|n| n.parse().ok())
        .expect("changed=N")
}

fn id(flag: &str) -> String {
    let out = Command::new("id").arg(flag).output().expect("id");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn agent_role_installs_enrolls_and_is_idempotent_on_localhost() {
    if !have("ansible-playbook") {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let ctl = ControllerProcess::start(&work.path().join("controller"));
    let token = ctl.token(&["lab-b"], "1h", 1);
    let fingerprint = ctl.fingerprint();
    let prefix = work.path().join("root");
    let bin_dir = shoal_tests::bin("shoal-agent")
        .parent()
        .expect("binary directory")
        .to_owned();
    assert!(shoal_tests::bin("shoal").exists());
    let port = free_port();

    // Everything under the prefix, as the current user, no systemd.
    let inventory = work.path().join("inventory.yml");
    let vars = serde_json::json!({
        "ansible_connection": "local",
        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        "ansible_become": false,
        "shoal_prefix": prefix,
        "shoal_bin_src_dir": bin_dir,
        "shoal_user": id("-un"),
        "shoal_group": id("-gn"),
        "shoal_config_owner": id("-un"),
        "shoal_create_user": false,
        "shoal_manage_service": false,
        "shoal_controller_url": ctl.addr,
        "shoal_agent_enroll_token": token,
        "shoal_agent_ca_fingerprint": fingerprint,
        "shoal_agent_hostname": "ansible-host1",
        "shoal_agent_listen": format!("127.0.0.1:{port}"),
        "shoal_agent_mdns": false,
        "shoal_agent_metrics_listen": "off",
        "shoal_agent_limits": {"upload_slots": 2},
        // The controller role installs and configures beside it (its
        // service is not run here: the test's controller is).
        "shoal_controller_listen": format!("127.0.0.1:{}", free_port()),
        "shoal_controller_metrics_listen": "off",
        "shoal_controller_log_format": "json",
    });
    let doc = serde_json::json!({
        "all": {
            "hosts": {"localhost": vars},
            "children": {
                "shoal_controllers": {"hosts": {"localhost": null}},
                "shoal_agents": {"hosts": {"localhost": null}},
            },
        }
    });
    std::fs::write(
        &inventory,
        serde_json::to_string_pretty(&doc).expect("json"),
    )
    .expect("write inventory");
    let inv = inventory.to_str().expect("utf-8");
    let limit = Duration::from_secs(300);

    let first = ansible(&["ansible-playbook", "-i", inv, "site.yml"], limit);
    assert_eq!(first.code, 0, "site.yml:\n{}{}", first.stdout, first.stderr);
    assert!(changed(&first.stdout) > 0, "{}", first.stdout);
    let config = prefix.join("etc/shoal/agent.yaml");
    let identity = prefix.join("var/lib/shoal/identity");
    for f in [
        prefix.join("usr/local/bin/shoal"),
        prefix.join("usr/local/bin/shoal-agent"),
        prefix.join("usr/local/bin/shoal-controller"),
        prefix.join("etc/shoal/controller.yaml"),
        config.clone(),
        identity.join("ca.pem"),
        identity.join("agent.pem"),
        identity.join("agent.key"),
    ] {
        assert!(f.exists(), "{} missing", f.display());
    }
    let agents = ctl.cli(&["agents", "list", "--json"]).json();
    let me = agents
        .as_array()
        .and_then(|l| l.iter().find(|a| a["agent_id"] == "ansible-host1"))
        .unwrap_or_else(|| panic!("not enrolled: {agents}"));
    assert_eq!(me["groups"], serde_json::json!(["lab-b"]));

    // Again: nothing changes, and the spent token is not needed.
    let second = ansible(&["ansible-playbook", "-i", inv, "site.yml"], limit);
    assert_eq!(
        second.code, 0,
        "second run:\n{}{}",
        second.stdout, second.stderr
    );
    assert_eq!(changed(&second.stdout), 0, "second run:\n{}", second.stdout);

    // The agent runs on what the role wrote and joins the controller.
    let mut cmd = Command::new(prefix.join("usr/local/bin/shoal-agent"));
    cmd.arg("--config").arg(&config).arg("run");
    let socket = prefix.join("var/lib/shoal/agent.sock");
    let status = |args: &[&str]| -> Run {
        Command::new(prefix.join("usr/local/bin/shoal"))
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .output()
            .expect("run shoal")
            .into()
    };
    let mut agent = spawn_ready(cmd, &work.path().join("agent.log"), "the agent", || {
        status(&["status"]).code == 0
    });
    wait_until(
        "the agent's session with the controller",
        Duration::from_secs(60),
        || {
            ctl.cli(&["agents", "list", "--json"])
                .json()
                .as_array()
                .is_some_and(|l| {
                    l.iter()
                        .any(|a| a["agent_id"] == "ansible-host1" && a["online"] == true)
                })
        },
    );
    let _ = agent.kill();
    let _ = agent.wait();

    // Uninstall: binaries and config go, the data directory stays.
    let run = ansible(&["ansible-playbook", "-i", inv, "uninstall.yml"], limit);
    assert_eq!(run.code, 0, "uninstall.yml:\n{}{}", run.stdout, run.stderr);
    assert!(!prefix.join("usr/local/bin/shoal-agent").exists());
    assert!(!prefix.join("usr/local/bin/shoal-controller").exists());
    assert!(!config.exists());
    assert!(identity.join("agent.pem").exists(), "kept without purge");
}

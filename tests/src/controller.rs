//! A real `shoal-controller` process for tests: its config, data
//! directory, admin commands and enrollment of agents through the real
//! `shoal-agent enroll`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use shoal_agent::config::TlsPaths;

use crate::process::{free_port, spawn_ready};
use crate::{Run, bin};

/// One controller process on loopback.
#[derive(Debug)]
pub struct ControllerProcess {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub addr: String,
    /// `metrics_listen`: where its Prometheus `/metrics` is served (a free
    /// loopback port, so controllers of parallel tests do not collide).
    pub metrics_addr: String,
    child: Option<Child>,
}

impl ControllerProcess {
    /// Writes a config under `dir` (loopback, free port) and starts it.
    pub fn start(dir: &Path) -> Self {
        let mut c = Self::configure(dir);
        c.restart();
        c
    }

    /// Writes a config under `dir` (loopback, free port); does not start.
    pub fn configure(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("mkdir");
        let addr = format!("127.0.0.1:{}", free_port());
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let config = dir.join("controller.yaml");
        std::fs::write(
            &config,
            format!(
                "listen: {addr}\nmetrics_listen: {metrics_addr}\ndata_dir: {}\nlog_level: info\n",
                dir.join("data").display()
            ),
        )
        .expect("write config");
        Self {
            dir: dir.to_owned(),
            config,
            addr,
            metrics_addr,
            child: None,
        }
    }

    /// (Re)starts the process; returns once admin calls are answered.
    pub fn restart(&mut self) {
        let mut cmd = Command::new(bin("shoal-controller"));
        cmd.arg("--config").arg(&self.config).arg("serve");
        let log = self.dir.join("controller.log");
        let child = spawn_ready(cmd, &log, "the controller", || {
            self.cli(&["agents", "list"]).code == 0
        });
        self.child = Some(child);
    }

    /// SIGKILL: no chance to flush.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `shoal-controller --config … args…` (admin commands use the admin
    /// identity the controller wrote on first start).
    pub fn cli(&self, args: &[&str]) -> Run {
        Command::new(bin("shoal-controller"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running shoal-controller: {e}"))
            .into()
    }

    /// The fleet CA's fingerprint.
    pub fn fingerprint(&self) -> String {
        let run = self.cli(&["ca-fingerprint"]);
        assert_eq!(run.code, 0, "ca-fingerprint: {}", run.stderr);
        run.stdout.trim().to_owned()
    }

    /// A join token for `groups`.
    pub fn token(&self, groups: &[&str], ttl: &str, uses: u32) -> String {
        let mut args = vec!["token", "create", "--ttl", ttl, "--json"];
        let uses = uses.to_string();
        args.extend(["--uses", &uses]);
        for g in groups {
            args.extend(["--group", g]);
        }
        let run = self.cli(&args);
        assert_eq!(run.code, 0, "token create: {}{}", run.stdout, run.stderr);
        run.json()["token"].as_str().expect("token").to_owned()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("controller.log")).unwrap_or_default()
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs `shoal-agent enroll` for a host named `hostname`, writing its
/// identity under `dir`. Returns the run and where the files go.
pub fn enroll(
    controller: &str,
    token: &str,
    fingerprint: &str,
    hostname: &str,
    dir: &Path,
) -> (Run, TlsPaths) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let tls = TlsPaths {
        ca: dir.join("ca.pem"),
        cert: dir.join("agent.pem"),
        key: dir.join("agent.key"),
    };
    let config = dir.join("enroll.yaml");
    std::fs::write(
        &config,
        format!(
            "data_dir: {}\ntls:\n  ca: {}\n  cert: {}\n  key: {}\n",
            dir.join("data").display(),
            tls.ca.display(),
            tls.cert.display(),
            tls.key.display()
        ),
    )
    .expect("write config");
    let run = Command::new(bin("shoal-agent"))
        .arg("--config")
        .arg(&config)
        .args([
            "enroll",
            "--controller",
            controller,
            "--token",
            token,
            "--ca-fingerprint",
            fingerprint,
            "--hostname",
            hostname,
            "--json",
        ])
        .output()
        .unwrap_or_else(|e| panic!("running shoal-agent enroll: {e}"))
        .into();
    (run, tls)
}

/// Starts an agent with identity `tls` that keeps a session with `ctl`
/// (status every second).
pub fn start_agent(
    pki: &crate::swarm::Pki,
    ctl: &ControllerProcess,
    id: &str,
    dir: &Path,
    tls: TlsPaths,
) -> crate::process::AgentProcess {
    start_agent_with(pki, ctl, id, dir, tls, "")
}

/// [`start_agent`] with `extra` YAML appended to the agent's config (a
/// `metrics:` section, say).
pub fn start_agent_with(
    pki: &crate::swarm::Pki,
    ctl: &ControllerProcess,
    id: &str,
    dir: &Path,
    tls: TlsPaths,
    extra: &str,
) -> crate::process::AgentProcess {
    crate::process::AgentProcess::start_with(
        pki,
        id,
        dir,
        crate::process::AgentOptions {
            tls: Some(tls),
            extra: format!(
                "controller:\n  url: {}\n  status_interval: 1s\n{extra}",
                ctl.addr
            ),
            ..Default::default()
        },
    )
}

/// Polls `check` every 200 ms until it holds; panics after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

//! A real `shoal-controller` process for tests: its config, data
//! directory, admin commands and enrollment of agents through the real
//! `shoal-agent enroll`. On loopback, or inside a testbed namespace
//! ([`ControllerProcess::start_on`]) where agents of every subnet reach it
//! through the router.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use shoal_agent::config::TlsPaths;

use crate::netns::Host;
use crate::process::{AgentOptions, command_in, free_port, spawn_ready};
use crate::{Run, bin};

/// One controller process, on loopback or in a testbed namespace.
#[derive(Debug)]
pub struct ControllerProcess {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub addr: String,
    /// `metrics_listen`: where its Prometheus `/metrics` is served (a free
    /// loopback port, so controllers of parallel tests do not collide;
    /// on a testbed, the host's address, reachable only from the testbed).
    pub metrics_addr: String,
    /// The namespace it runs in (and its admin commands too), if any.
    netns: Option<String>,
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
        let addr = format!("127.0.0.1:{}", free_port());
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        Self::write_config(dir, addr, metrics_addr, None)
    }

    /// Writes a config under `dir` for running in `host`'s namespace,
    /// listening on its address (port 7800, metrics on 7801), and starts
    /// it. Agents on any subnet of the testbed reach it at
    /// [`addr`](Self::addr) (`host` may be [`crate::netns::Testbed::router_host`]);
    /// [`cli`](Self::cli) runs in the namespace too.
    pub fn start_on(dir: &Path, host: &Host) -> Self {
        let mut c = Self::configure_on(dir, host);
        c.restart();
        c
    }

    /// [`start_on`](Self::start_on) without starting it.
    pub fn configure_on(dir: &Path, host: &Host) -> Self {
        Self::write_config(
            dir,
            format!("{}:7800", host.ip),
            format!("{}:7801", host.ip),
            Some(host.ns.clone()),
        )
    }

    /// The namespace it runs in, if not the test's own.
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    fn write_config(dir: &Path, addr: String, metrics_addr: String, netns: Option<String>) -> Self {
        std::fs::create_dir_all(dir).expect("mkdir");
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
            netns,
            child: None,
        }
    }

    /// (Re)starts the process; returns once admin calls are answered.
    pub fn restart(&mut self) {
        let mut cmd = command_in(self.netns.as_deref(), &bin("shoal-controller"));
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
    /// identity the controller wrote on first start). In a namespace, runs
    /// there, aimed at [`addr`](Self::addr) (admin commands default to
    /// 127.0.0.1, where it does not listen then).
    pub fn cli(&self, args: &[&str]) -> Run {
        let mut cmd = command_in(self.netns.as_deref(), &bin("shoal-controller"));
        cmd.arg("--config").arg(&self.config);
        if self.netns.is_some() {
            cmd.args(["--controller", &self.addr]);
        }
        cmd.args(args)
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
    enroll_in(None, controller, token, fingerprint, hostname, dir)
}

/// [`enroll`] from inside network namespace `netns` (a testbed host's,
/// so it reaches a controller on the testbed) when there is one.
pub fn enroll_in(
    netns: Option<&str>,
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
    let run = command_in(netns, &bin("shoal-agent"))
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

/// Starts an agent with identity `tls` as `opts` say (on a testbed host:
/// [`AgentOptions::on`]) that keeps a session with `ctl` (status every
/// second); `opts.extra` is appended after the `controller:` section.
pub fn start_agent_in(
    pki: &crate::swarm::Pki,
    ctl: &ControllerProcess,
    id: &str,
    dir: &Path,
    tls: TlsPaths,
    opts: AgentOptions,
) -> crate::process::AgentProcess {
    let extra = format!(
        "controller:\n  url: {}\n  status_interval: 1s\n{}",
        ctl.addr, opts.extra
    );
    crate::process::AgentProcess::start_with(
        pki,
        id,
        dir,
        AgentOptions {
            tls: Some(tls),
            extra,
            ..opts
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

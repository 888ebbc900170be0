//! Agents as real processes: `shoal-agent` with a YAML config, driven
//! through the `shoal` CLI. Killed (SIGKILL) when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shoal_agent::config::TlsPaths;

use crate::netns::{Host, Testbed};
use crate::swarm::Pki;
use crate::{Run, bin};

/// A seed (`seed`, on the first host) and agents (`host-N`) on every host
/// of a testbed, listening on port 7400, finding each other by mDNS.
pub fn start_on_testbed(pki: &Pki, tb: &Testbed, work: &Path) -> Vec<AgentProcess> {
    tb.hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let id = if i == 0 {
                "seed".to_owned()
            } else {
                format!("host-{i}")
            };
            AgentProcess::start_with(
                pki,
                &id,
                &work.join(&id),
                AgentOptions {
                    listen: Some(format!("{}:7400", h.ip)),
                    netns: Some(h.ns.clone()),
                    mdns: true,
                    ..Default::default()
                },
            )
        })
        .collect()
}

/// Waits until every agent holds `package` complete; panics with the
/// laggard's progress and log after `timeout`.
pub fn wait_complete(agents: &[&AgentProcess], package: &str, size: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    for a in agents {
        loop {
            let state = a.package_state(package);
            if state.as_deref() == Some("complete") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not complete {package} within {timeout:?} ({state:?}, {} of {size} bytes); log:\n{}",
                a.id,
                a.bytes_done(package),
                a.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Waits until every agent knows at least `n` peers from `source`
/// (`mdns`, `static`, …) or from any source.
pub fn wait_for_peers(agents: &[AgentProcess], n: usize, source: Option<&str>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    for a in agents {
        loop {
            let peers = a.shoal(&["peers", "--json"]).json();
            let found = peers
                .as_array()
                .map(|l| {
                    l.iter()
                        .filter(|p| source.is_none_or(|s| p["source"] == s))
                        .count()
                })
                .unwrap_or(0);
            if found >= n {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} found only {found} peers; log:\n{}",
                a.id,
                a.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// A free loopback port (bound, then released for the agent to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// How to run an agent process.
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    /// `host:port` to listen on [default: 127.0.0.1 and a free port].
    pub listen: Option<String>,
    /// Network namespace to run in.
    pub netns: Option<String>,
    pub mdns: bool,
    pub static_peers: Vec<String>,
    /// YAML appended to the config.
    pub extra: String,
    /// Certificate files to use instead of a fresh certificate from the
    /// test CA (another CA's, say).
    pub tls: Option<TlsPaths>,
}

impl AgentOptions {
    /// Listening on `host`'s address, port 7400 (as [`start_on_testbed`]
    /// does), in its namespace, mDNS on.
    pub fn on(host: &Host) -> Self {
        Self {
            listen: Some(format!("{}:7400", host.ip)),
            netns: Some(host.ns.clone()),
            mdns: true,
            ..Default::default()
        }
    }
}

/// `program`, run inside network namespace `netns` (through `ip netns
/// exec`) when there is one.
pub fn command_in(netns: Option<&str>, program: &Path) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Spawns `cmd` with stderr appended to `log` and polls `ready` every
/// 100 ms; panics with the log if the process exits first or 30 s pass
/// (killing it first).
pub fn spawn_ready(
    mut cmd: Command,
    log: &Path,
    what: &str,
    mut ready: impl FnMut() -> bool,
) -> Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
    let read_log = || std::fs::read_to_string(log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited at start ({status}); log:\n{}", read_log());
        }
        if Instant::now() >= deadline {
            // Not left running after the panic: nothing owns it yet.
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not come up in 30 s; log:\n{}", read_log());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

/// One `shoal-agent` process.
#[derive(Debug)]
pub struct AgentProcess {
    pub id: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub port: u16,
    listen_host: String,
    netns: Option<String>,
    child: Option<Child>,
}

impl AgentProcess {
    /// Writes a config for `id` (loopback, mDNS off, `extra` YAML appended)
    /// and starts the agent.
    pub fn start(pki: &Pki, id: &str, dir: &Path, static_peers: &[String], extra: &str) -> Self {
        Self::start_with(
            pki,
            id,
            dir,
            AgentOptions {
                static_peers: static_peers.to_vec(),
                extra: extra.to_owned(),
                ..Default::default()
            },
        )
    }

    /// Starts an agent as `opts` say.
    pub fn start_with(pki: &Pki, id: &str, dir: &Path, opts: AgentOptions) -> Self {
        std::fs::create_dir_all(dir).expect("mkdir");
        let tls = opts
            .tls
            .clone()
            .unwrap_or_else(|| pki.agent_tls(id, &["lab"]));
        let listen = opts
            .listen
            .clone()
            .unwrap_or_else(|| format!("127.0.0.1:{}", free_port()));
        let (listen_host, port) = listen.rsplit_once(':').expect("host:port");
        let port: u16 = port.parse().expect("port");
        // Agents share loopback: no metrics endpoint unless a test asks.
        let extra = if opts.extra.contains("metrics:") {
            opts.extra.clone()
        } else {
            format!("{}\nmetrics:\n  listen: 'off'\n", opts.extra)
        };
        let peers = opts
            .static_peers
            .iter()
            .map(|p| format!("'{p}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let yaml = format!(
            "data_dir: {data}\nlisten: {listen}\ntls:\n  ca: {ca}\n  cert: {cert}\n  key: {key}\n\
             trusted_publishers: ['{publisher}']\ndiscovery:\n  mdns: {mdns}\n  static_peers: [{peers}]\n\
             log:\n  level: info\n{extra}\n",
            data = dir.join("data").display(),
            ca = tls.ca.display(),
            cert = tls.cert.display(),
            key = tls.key.display(),
            publisher = pki.publisher.public(),
            mdns = opts.mdns,
        );
        let config = dir.join("agent.yaml");
        std::fs::write(&config, yaml).expect("write config");
        let mut a = Self {
            id: id.to_owned(),
            dir: dir.to_owned(),
            socket: dir.join("data/agent.sock"),
            config,
            port,
            listen_host: listen_host.to_owned(),
            netns: opts.netns.clone(),
            child: None,
        };
        a.restart();
        a
    }

    pub fn addr(&self) -> String {
        format!("{}:{}", self.listen_host, self.port)
    }

    /// (Re)starts the process and waits until its control socket answers.
    pub fn restart(&mut self) {
        let mut cmd = command_in(self.netns.as_deref(), &bin("shoal-agent"));
        cmd.args(["--config"]).arg(&self.config).arg("run");
        let log = self.dir.join("agent.log");
        let child = spawn_ready(cmd, &log, &self.id, || self.shoal(&["status"]).code == 0);
        self.child = Some(child);
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs `shoal --socket <this agent's socket> args…`.
    pub fn shoal(&self, args: &[&str]) -> Run {
        Command::new(bin("shoal"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running shoal: {e}"))
            .into()
    }

    /// `shoal publish MANIFEST CONTENT` on this agent; panics on failure.
    pub fn publish(&self, manifest: &Path, content: &Path) {
        let run = self.shoal(&[
            "publish",
            manifest.to_str().expect("utf-8 path"),
            content.to_str().expect("utf-8 path"),
        ]);
        assert_eq!(
            run.code, 0,
            "{}: publish failed: {}{}",
            self.id, run.stdout, run.stderr
        );
    }

    /// `bytes_done` of `package` (`name@version`) in `shoal list --json`;
    /// 0 when the agent does not answer or does not hold it.
    pub fn bytes_done(&self, package: &str) -> u64 {
        self.package_field(package, "bytes_done")
            .and_then(|v| v.as_u64())
            .unwrap_or(0)
    }

    /// `state` of `package` (`name@version`) in `shoal list --json`
    /// (`downloading`, `complete`, …), if the agent holds it.
    pub fn package_state(&self, package: &str) -> Option<String> {
        self.package_field(package, "state")
            .and_then(|v| v.as_str().map(str::to_owned))
    }

    /// `field` of `package` (`name@version`) in `shoal list --json`, if
    /// the agent answers and holds it.
    pub fn package_field(&self, package: &str, field: &str) -> Option<serde_json::Value> {
        let run = self.shoal(&["list", "--json"]);
        if run.code != 0 {
            return None;
        }
        let list = serde_json::from_str::<serde_json::Value>(&run.stdout).ok()?;
        list.as_array()?
            .iter()
            .find(|p| {
                format!(
                    "{}@{}",
                    p["name"].as_str().unwrap_or(""),
                    p["version"].as_str().unwrap_or("")
                ) == package
            })
            .map(|p| p[field].clone())
    }

    /// A number from `shoal status --json` (`bytes_received`, …); panics if
    /// the agent does not answer.
    pub fn status_u64(&self, field: &str) -> u64 {
        self.shoal(&["status", "--json"]).json()[field]
            .as_u64()
            .unwrap_or_else(|| panic!("{}: no {field} in status", self.id))
    }

    /// Whether `shoal peers --json` lists `agent_id` as banned.
    pub fn has_banned(&self, agent_id: &str) -> bool {
        let run = self.shoal(&["peers", "--json"]);
        run.code == 0
            && serde_json::from_str::<serde_json::Value>(&run.stdout)
                .ok()
                .and_then(|v| v.as_array().cloned())
                .is_some_and(|l| {
                    l.iter()
                        .any(|p| p["agent_id"] == agent_id && p["banned"] == true)
                })
    }

    /// Process id of the running agent.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

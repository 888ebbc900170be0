//! Shoal distributing one package on a namespace testbed, as `bench-swarm`
//! measures it: agents on every host (host 0 seeds), every other host
//! runs `shoal fetch --wait` at once, and the run records when each
//! finished, what each held over time, what each sent and received, and
//! each agent's CPU and peak memory. Agents may be killed (SIGKILL) and
//! restarted mid-run ([`Outage`]); their counters are summed over their
//! lives.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::baselines::{
    self, MethodResult, ProcStats, cpu_seconds, interrupted, peak_rss, rx_all, tx_all,
};
use crate::local_probe::LocalProbe;
use crate::netns::Testbed;
use crate::process::{AgentOptions, AgentProcess};
use crate::swarm::Pki;

/// TCP payload gets about this share of a tbf rate on this kind of
/// machine (PRODUCT.md); ideal makespans use the rate TCP can reach.
pub const TCP_SHARE: f64 = 0.957;
/// How often the timeline records bytes held per host (and peak RSS).
const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// How long agents may take to know each other before the timed part.
pub const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(120);

/// The ideal makespan of `bytes` over links of `rate_bytes` per second:
/// every host receives at the rate TCP gets of its link.
pub fn ideal_seconds(bytes: u64, rate_bytes: u64) -> f64 {
    bytes as f64 / (rate_bytes as f64 * TCP_SHARE)
}

/// The agent id of host `i`: `seed` for host 0, else `host-i`.
pub fn agent_id(i: usize) -> String {
    if i == 0 {
        "seed".to_owned()
    } else {
        format!("host-{i}")
    }
}

/// Config YAML for the agents' upload slots.
pub fn limits_yaml(upload_slots: u32) -> String {
    format!("limits:\n  upload_slots: {upload_slots}\n")
}

/// An agent on every host of `tb` (data under `dir/<id>`), finding the
/// others by mDNS, with `extra` YAML in its config.
pub fn start_agents(pki: &Pki, tb: &Testbed, dir: &Path, extra: &str) -> Vec<AgentProcess> {
    tb.hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let id = agent_id(i);
            AgentProcess::start_with(
                pki,
                &id,
                &dir.join(&id),
                AgentOptions {
                    extra: extra.to_owned(),
                    ..AgentOptions::on(h)
                },
            )
        })
        .collect()
}

/// Parsed `shoal … --json` output of an agent, if it answered.
fn cli_json(a: &AgentProcess, args: &[&str]) -> Option<serde_json::Value> {
    let run = a.shoal(args);
    if run.code != 0 {
        return None;
    }
    serde_json::from_str(&run.stdout).ok()
}

/// Distinct agents `a` knows as peers, from any source.
fn known_peers(a: &AgentProcess) -> usize {
    let mut ids: Vec<String> = cli_json(a, &["peers", "--json"])
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p["agent_id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids.dedup();
    ids.len()
}

/// Waits until every agent knows at least `n` other agents (mDNS, the
/// controller's roster, …); fails after `timeout` or on an interrupt.
pub fn wait_for_swarm(agents: &[AgentProcess], n: usize, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    for a in agents {
        loop {
            baselines::check_interrupted()?;
            let known = known_peers(a);
            if known >= n {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} knows {known} of {n} peers after {timeout:?}",
                    a.id
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    Ok(())
}

/// Agents on every host of `tb`, mDNS only; the seed publishes
/// `manifest` from `content`; returns once every agent knows every other.
pub fn start_swarm(
    pki: &Pki,
    tb: &Testbed,
    dir: &Path,
    extra: &str,
    manifest: &Path,
    content: &Path,
) -> Result<Vec<AgentProcess>, String> {
    let agents = start_agents(pki, tb, dir, extra);
    agents[0].publish(manifest, content);
    wait_for_swarm(&agents, agents.len() - 1, DISCOVERY_TIMEOUT)?;
    Ok(agents)
}

/// One host killed with SIGKILL during the timed part and restarted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outage {
    /// Index into the agents (not 0: the seed stays up).
    pub host: usize,
    /// Seconds after the start.
    pub at_s: f64,
    /// Seconds between the kill and the restart.
    pub down_s: f64,
}

/// What one [`Outage`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct OutageRecord {
    pub host: usize,
    pub killed_at_s: f64,
    /// When its control socket answered again.
    pub back_at_s: f64,
    /// `bytes_done` just before the kill and right after the restart
    /// (what the restarted agent re-verified and kept).
    pub held_before: u64,
    pub held_after: u64,
    /// Whether it already held a complete copy when killed.
    pub was_complete: bool,
}

impl OutageRecord {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "host": self.host, "killed_at_s": self.killed_at_s, "back_at_s": self.back_at_s,
            "held_before_bytes": self.held_before, "held_after_bytes": self.held_after,
            "was_complete": self.was_complete,
        })
    }
}

/// What to distribute, and how long it may take.
#[derive(Debug, Clone, Copy)]
pub struct Fetch<'a> {
    /// `name@version`, published on the seed (host 0).
    pub package: &'a str,
    pub timeout: Duration,
    pub outages: &'a [Outage],
}

/// What a distribution measured. Per host (seed first) unless said.
#[derive(Debug, Clone)]
pub struct Distribution {
    /// When each receiving host (1..) first held a complete, verified copy.
    pub completion_s: Vec<f64>,
    /// `bytes_done` per receiving host over time.
    pub timeline: Vec<(f64, Vec<u64>)>,
    /// `eth0` counters over the timed part.
    pub tx_bytes: Vec<u64>,
    pub rx_bytes: Vec<u64>,
    /// The agents' own `bytes_sent` / `bytes_received`, over all lives.
    pub sent: Vec<u64>,
    pub received: Vec<u64>,
    /// CPU over the timed part (all lives), largest `VmHWM` of any life.
    pub procs: Vec<ProcStats>,
    pub outages: Vec<OutageRecord>,
    /// Wall-clock start of the timed part (Unix seconds), to find it in
    /// the agents' logs.
    pub started_unix_s: f64,
}

impl Distribution {
    pub fn makespan_s(&self) -> f64 {
        self.completion_s.iter().copied().fold(0.0, f64::max)
    }

    /// As one of bench-swarm's methods, `size` being the package's size.
    pub fn method_result(&self, method: &str, size: u64) -> MethodResult {
        MethodResult {
            method: method.into(),
            makespan_s: self.makespan_s(),
            completion_s: self.completion_s.clone(),
            timeline: self.timeline.clone(),
            tx_bytes: self.tx_bytes.clone(),
            uploaded: self.sent.clone(),
            uploaded_source: "shoal status bytes_sent",
            seed_procs: vec![("shoal-agent".into(), self.procs[0])],
            host_procs: self.procs[1..].to_vec(),
            host_proc_name: "shoal-agent".into(),
            extra: serde_json::json!({
                "bytes_sent": self.sent,
                "bytes_received": self.received,
                "rx_bytes": self.rx_bytes,
                "seed_bytes_sent_copies": self.sent[0] as f64 / size as f64,
                "outages": self.outages.iter().map(OutageRecord::json).collect::<Vec<_>>(),
                "started_unix_s": self.started_unix_s,
            }),
        }
    }
}

/// One host's agent over the timed part, across restarts.
#[derive(Debug, Default)]
struct Life {
    pid: Option<u32>,
    /// CPU of the current process when the timed part (or its life) began.
    cpu_base: f64,
    /// CPU, sent and received of earlier lives.
    cpu_done: f64,
    sent_done: u64,
    received_done: u64,
    /// The current life's counters when the timed part began.
    sent_base: u64,
    received_base: u64,
    peak_rss: u64,
    /// Fetch generation: a fetch of an older one ended with its agent.
    generation: u32,
    /// The current generation's fetch returned the package complete.
    fetched: bool,
    held: u64,
}

impl Life {
    fn start(&mut self, a: &AgentProcess, probe: &mut LocalProbe, counting_from_zero: bool) {
        self.pid = a.pid();
        if counting_from_zero {
            (self.cpu_base, self.sent_base, self.received_base) = (0.0, 0, 0);
        } else {
            self.cpu_base = self.pid.and_then(cpu_seconds).unwrap_or(0.0);
            let s = probe.status(&a.socket);
            self.sent_base = s.as_ref().map_or(0, |s| s.bytes_sent);
            self.received_base = s.as_ref().map_or(0, |s| s.bytes_received);
        }
        self.sample_rss();
    }

    fn sample_rss(&mut self) {
        if let Some(r) = self.pid.and_then(peak_rss) {
            self.peak_rss = self.peak_rss.max(r);
        }
    }

    /// Folds the current life's figures into the totals (before a kill,
    /// and at the end).
    fn end(&mut self, a: &AgentProcess, probe: &mut LocalProbe) {
        self.sample_rss();
        let cpu = self.pid.and_then(cpu_seconds).unwrap_or(self.cpu_base);
        self.cpu_done += (cpu - self.cpu_base).max(0.0);
        let s = probe.status(&a.socket);
        self.sent_done += s
            .as_ref()
            .map_or(self.sent_base, |s| s.bytes_sent)
            .saturating_sub(self.sent_base);
        self.received_done += s
            .as_ref()
            .map_or(self.received_base, |s| s.bytes_received)
            .saturating_sub(self.received_base);
        self.pid = None;
    }
}

struct FetchDone {
    host: usize,
    generation: u32,
    at_s: f64,
    result: Result<(), String>,
}

/// Runs `shoal fetch PACKAGE --wait` against the agent at `socket` on a
/// thread of its own, which reports when it returned. It ends when its
/// agent does, so killing the agent ends it.
fn spawn_fetch(
    tx: mpsc::Sender<FetchDone>,
    host: usize,
    generation: u32,
    socket: PathBuf,
    package: String,
    started: Instant,
) {
    std::thread::spawn(move || {
        let out = Command::new(crate::bin("shoal"))
            .arg("--socket")
            .arg(&socket)
            .args(["fetch", &package, "--wait", "--json", "-q"])
            .output();
        let at_s = started.elapsed().as_secs_f64();
        let result = match out {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout).trim(),
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => Err(format!("running shoal: {e}")),
        };
        let _ = tx.send(FetchDone {
            host,
            generation,
            at_s,
            result,
        });
    });
}

/// Where one outage is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Pending,
    Down { killed_at_s: f64 },
    Restarting,
    Done,
}

/// Every host but the seed fetches `f.package` at once; returns when
/// every one holds a complete, verified copy and every outage is over.
/// Each host's completion is when its `shoal fetch --wait` returned
/// (as curl's exit is for HTTP); `bytes_done` is polled every 2 s for the
/// timeline over each agent's control socket from this process (see
/// [`LocalProbe`]), so polling costs the CPU little. On failure, timeout or
/// interrupt the fetches are cancelled (and their agents killed if that
/// does not end them).
pub fn distribute(
    agents: &mut [AgentProcess],
    tb: &Testbed,
    f: &Fetch,
) -> Result<Distribution, String> {
    let hosts = agents.len();
    if hosts < 2 || hosts != tb.hosts.len() {
        return Err(format!(
            "{hosts} agents for a testbed of {} hosts",
            tb.hosts.len()
        ));
    }
    if let Some(o) = f.outages.iter().find(|o| o.host == 0 || o.host >= hosts) {
        return Err(format!("outage of host {}: not a receiving host", o.host));
    }
    let mut out_hosts: Vec<usize> = f.outages.iter().map(|o| o.host).collect();
    out_hosts.sort_unstable();
    out_hosts.dedup();
    if out_hosts.len() != f.outages.len() {
        return Err("at most one outage per host".into());
    }
    let mut probe = LocalProbe::new()?;
    let mut lives: Vec<Life> = (0..hosts).map(|_| Life::default()).collect();
    for (l, a) in lives.iter_mut().zip(agents.iter()) {
        l.start(a, &mut probe, false);
    }
    let tx0 = tx_all(tb)?;
    let rx0 = rx_all(tb)?;
    let sockets: Vec<PathBuf> = agents.iter().map(|a| a.socket.clone()).collect();
    let mut phases = vec![Phase::Pending; f.outages.len()];
    let mut records: Vec<Option<OutageRecord>> = vec![None; f.outages.len()];

    let started = Instant::now();
    let started_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let (done_tx, done_rx) = mpsc::channel::<FetchDone>();
    for (i, socket) in sockets.iter().enumerate().skip(1) {
        spawn_fetch(
            done_tx.clone(),
            i,
            0,
            socket.clone(),
            f.package.to_owned(),
            started,
        );
    }
    let mut completion: Vec<Option<f64>> = vec![None; hosts];
    let mut timeline: Vec<(f64, Vec<u64>)> = Vec::new();
    let mut failed: Option<String> = None;
    let mut running = hosts - 1;

    std::thread::scope(|s| {
        // An agent is lent to the thread restarting it meanwhile.
        let mut slots: Vec<Option<&mut AgentProcess>> = agents.iter_mut().map(Some).collect();
        let mut restarts: Vec<(usize, std::thread::ScopedJoinHandle<'_, &mut AgentProcess>)> =
            Vec::new();
        let mut next_sample = Instant::now();
        loop {
            let t = started.elapsed().as_secs_f64();
            let outages_over = phases.iter().all(|p| *p == Phase::Done);
            let all_done = completion[1..].iter().all(Option::is_some)
                && outages_over
                && f.outages.iter().all(|o| lives[o.host].fetched);
            if all_done || failed.is_some() {
                break;
            }
            if Instant::now() >= next_sample {
                let mut row = Vec::with_capacity(hosts - 1);
                for (i, slot) in slots.iter().enumerate() {
                    if let Some(a) = slot
                        && lives[i].pid.is_some()
                    {
                        lives[i].sample_rss();
                        if i > 0 {
                            lives[i].held = probe
                                .bytes_done(&a.socket, f.package)
                                .unwrap_or(lives[i].held);
                        }
                    }
                    if i > 0 {
                        row.push(lives[i].held);
                    }
                }
                timeline.push((t, row));
                next_sample = Instant::now() + SAMPLE_EVERY;
            }
            // Outages: kill when due, restart (on a thread) when down long
            // enough.
            for (k, o) in f.outages.iter().enumerate() {
                match phases[k] {
                    Phase::Pending if t >= o.at_s => {
                        if let Some(a) = slots[o.host].as_deref_mut() {
                            let held = probe
                                .bytes_done(&a.socket, f.package)
                                .unwrap_or(lives[o.host].held);
                            lives[o.host].end(a, &mut probe);
                            lives[o.host].generation += 1;
                            lives[o.host].fetched = false;
                            a.kill9();
                            let killed_at_s = started.elapsed().as_secs_f64();
                            eprintln!("  killed {} at {killed_at_s:.1} s", a.id);
                            records[k] = Some(OutageRecord {
                                host: o.host,
                                killed_at_s,
                                back_at_s: f64::NAN,
                                held_before: held,
                                held_after: 0,
                                was_complete: completion[o.host].is_some(),
                            });
                            phases[k] = Phase::Down { killed_at_s };
                        }
                    }
                    Phase::Down { killed_at_s } if t >= killed_at_s + o.down_s => {
                        if let Some(a) = slots[o.host].take() {
                            restarts.push((
                                k,
                                s.spawn(move || {
                                    a.restart();
                                    a
                                }),
                            ));
                            phases[k] = Phase::Restarting;
                        }
                    }
                    _ => {}
                }
            }
            let (ready, waiting): (Vec<_>, Vec<_>) =
                restarts.drain(..).partition(|(_, h)| h.is_finished());
            restarts = waiting;
            for (k, h) in ready {
                let host = f.outages[k].host;
                match h.join() {
                    Ok(a) => {
                        let back_at_s = started.elapsed().as_secs_f64();
                        lives[host].start(a, &mut probe, true);
                        if let Some(r) = records[k].as_mut() {
                            r.back_at_s = back_at_s;
                            r.held_after = probe.bytes_done(&a.socket, f.package).unwrap_or(0);
                        }
                        eprintln!("  {} back at {back_at_s:.1} s", a.id);
                        spawn_fetch(
                            done_tx.clone(),
                            host,
                            lives[host].generation,
                            sockets[host].clone(),
                            f.package.to_owned(),
                            started,
                        );
                        running += 1;
                        slots[host] = Some(a);
                        phases[k] = Phase::Done;
                    }
                    Err(_) => {
                        failed = Some(format!("restarting {} failed", agent_id(host)));
                        phases[k] = Phase::Done;
                    }
                }
            }
            match done_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(d) => {
                    running -= 1;
                    let current = d.generation == lives[d.host].generation;
                    match d.result {
                        Ok(()) => {
                            completion[d.host].get_or_insert(d.at_s);
                            if current {
                                lives[d.host].fetched = true;
                            }
                        }
                        // The agent was killed under it: expected.
                        Err(_) if !current => {}
                        Err(e) => failed = Some(format!("{}: {e}", agent_id(d.host))),
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    failed = Some("the fetch threads are gone".into());
                }
            }
            if interrupted() {
                failed = Some("interrupted".into());
            }
            if started.elapsed() > f.timeout {
                let left: Vec<String> = (1..hosts)
                    .filter(|&i| completion[i].is_none())
                    .map(agent_id)
                    .collect();
                failed = Some(format!(
                    "not done after {:?}: {}",
                    f.timeout,
                    left.join(", ")
                ));
            }
        }
        // Restarts in progress end within their own bound (30 s).
        for (k, h) in restarts {
            let host = f.outages[k].host;
            if let Ok(a) = h.join() {
                slots[host] = Some(a);
            }
        }
        if failed.is_some() {
            // Cancelling ends the fetches; agents that do not answer are
            // killed, which ends theirs.
            for a in slots.iter().skip(1).flatten() {
                let _ = a.shoal(&["cancel", f.package]);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while running > 0 && Instant::now() < deadline {
                if done_rx.recv_timeout(Duration::from_millis(200)).is_ok() {
                    running -= 1;
                }
            }
            if running > 0 {
                for a in slots.iter_mut().flatten() {
                    a.kill9();
                }
            }
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    timeline.push((
        started.elapsed().as_secs_f64(),
        agents[1..]
            .iter()
            .map(|a| probe.bytes_done(&a.socket, f.package).unwrap_or(0))
            .collect(),
    ));
    let tx1 = tx_all(tb)?;
    let rx1 = rx_all(tb)?;
    for (l, a) in lives.iter_mut().zip(agents.iter()) {
        l.end(a, &mut probe);
    }
    let diff = |a: &[u64], b: &[u64]| -> Vec<u64> {
        a.iter().zip(b).map(|(a, b)| b.saturating_sub(*a)).collect()
    };
    Ok(Distribution {
        completion_s: completion[1..]
            .iter()
            .map(|c| c.unwrap_or(f64::NAN))
            .collect(),
        timeline,
        tx_bytes: diff(&tx0, &tx1),
        rx_bytes: diff(&rx0, &rx1),
        sent: lives.iter().map(|l| l.sent_done).collect(),
        received: lives.iter().map(|l| l.received_done).collect(),
        procs: lives
            .iter()
            .map(|l| ProcStats {
                cpu_s: l.cpu_done,
                peak_rss: l.peak_rss,
            })
            .collect(),
        outages: records.into_iter().flatten().collect(),
        started_unix_s,
    })
}

//! `bench-controller`: one real `shoal-controller` on loopback and N
//! simulated agents, each enrolled over `AgentControl.Enroll` with its own
//! key and certificate and holding its own mTLS session, reporting status
//! every `--interval`. While the sessions run, an admin applies policies.
//! Reports the latency of status reports (send to `StatusAck`) and of
//! `ApplyPolicy`, how long a policy takes to reach the sessions, and the
//! controller's CPU and memory.
//!
//! Run: `cargo run --release -p shoal-tests --bin bench-controller -- --help`

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use hyper_util::rt::TokioIo;
use shoal_agent::config::TlsPaths;
use shoal_agent::enroll::{EnrollOptions, controller_client_config, enroll};
use shoal_agent::transport::client::error_chain;
use shoal_agent::transport::tls::{TlsIdentity, server_name_for};
use shoal_agent::transport::{
    CONNECT_TIMEOUT, HANDSHAKE_TIMEOUT, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT,
};
use shoal_proto::pb;
use shoal_proto::pb::admin_client::AdminClient;
use shoal_proto::pb::agent_control_client::AgentControlClient;
use shoal_proto::pb::controller_update::Update;
use shoal_proto::units::parse_duration;
use shoal_tests::controller::ControllerProcess;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

/// Session streams carry small messages (a roster of thousands of peers is
/// under 1 MiB); small windows keep thousands of connections cheap here.
const STREAM_WINDOW: u32 = 256 << 10;
const CONNECTION_WINDOW: u32 = 512 << 10;
/// As the real agent: the largest update accepted.
const MAX_UPDATE: usize = 16 << 20;
/// As the real agent: reports waiting to be sent; when full, a report is
/// skipped (the controller is not reading).
const REPORT_QUEUE: usize = 4;
/// Reports a session remembers while waiting for their acks.
const MAX_PENDING: usize = 64;
/// Opening a session (after TLS) gives up after this, as the agent does.
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);
const APPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// After the window, how long to wait for acks of reports sent in it.
const DRAIN_LIMIT: Duration = Duration::from_secs(15);
/// Stopped sessions must have wound down within this.
const STOP_LIMIT: Duration = Duration::from_secs(30);
/// Reconnection backoff of a dropped session: from 1 s, doubling, to 30 s.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// USER_HZ, the unit of /proc/<pid>/stat times (100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;
const MIB: f64 = (1u64 << 20) as f64;
/// Reports are counted as "during applies" until this long after the last
/// apply returned (its policy is still being pushed).
const APPLY_SETTLE: Duration = Duration::from_secs(2);
/// The controller has caught up with the ramp-up when, over one interval,
/// no ack took longer than this and nearly every open session's report
/// was acknowledged.
const SETTLED_ACK: Duration = Duration::from_secs(1);

#[derive(Debug, Parser)]
#[command(
    name = "bench-controller",
    about = "Shoal controller under load: simulated agent sessions on loopback"
)]
struct Args {
    /// Simulated agents, each with its own certificate and session.
    #[arg(long, default_value_t = 5000)]
    agents: u32,
    /// Status report interval of every agent (spread evenly).
    #[arg(long, default_value = "10s", value_parser = duration)]
    interval: Duration,
    /// Measurement window, after every session is open and the warm-up.
    #[arg(long, default_value = "120s", value_parser = duration)]
    duration: Duration,
    /// Policies applied during the window.
    #[arg(long, default_value_t = 50)]
    applies: u32,
    /// Time between the starts of two applies.
    #[arg(long, default_value = "1s", value_parser = duration)]
    apply_every: Duration,
    /// Sessions run this long before the window opens.
    #[arg(long, default_value = "20s", value_parser = duration)]
    warmup: Duration,
    /// After the warm-up, wait up to this for the controller to catch up
    /// with the ramp-up (one interval of acks, none over 1 s) before the
    /// window opens; past it the window opens anyway.
    #[arg(long, default_value = "300s", value_parser = duration)]
    settle_timeout: Duration,
    /// Enrollments in flight at once.
    #[arg(long, default_value_t = 32)]
    enroll_concurrency: usize,
    /// Sessions being opened (TLS and the Session call) at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Enrollment, and then opening the sessions, each give up after this
    /// and the run goes on with what is there.
    #[arg(long, default_value = "600s", value_parser = duration)]
    ramp_timeout: Duration,
    /// Send `Hello` without a listen address: no roster entries, and no
    /// state write per agent when its session opens.
    #[arg(long)]
    no_listen_addrs: bool,
    /// Also write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Copy the controller's log here at the end.
    #[arg(long)]
    keep_log: Option<PathBuf>,
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

// ---- /proc -----------------------------------------------------------------

/// utime + stime of a `/proc/.../stat` line, seconds.
fn stat_cpu(stat: &str) -> Option<f64> {
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / TICKS_PER_SECOND)
}

fn cpu_seconds(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| stat_cpu(&s))
        .unwrap_or(0.0)
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), bytes.
fn status_bytes(pid: &str, field: &str) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// CPU seconds per thread name (tokio's workers share one), with the
/// number of threads of that name.
fn thread_cpu(pid: &str) -> HashMap<String, (f64, usize)> {
    let mut out: HashMap<String, (f64, usize)> = HashMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        let name = match (stat.find('('), stat.rfind(')')) {
            (Some(a), Some(b)) if a < b => stat[a + 1..b].to_owned(),
            _ => continue,
        };
        let e = out.entry(name).or_default();
        e.0 += stat_cpu(&stat).unwrap_or(0.0);
        e.1 += 1;
    }
    out
}

/// The `shoal-controller` child of this process started with `config`.
fn controller_pid(config: &Path) -> Option<String> {
    let me = std::process::id().to_string();
    let want = config.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid = e.file_name().into_string().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        let ppid = stat
            .get(stat.rfind(')')? + 2..)?
            .split_whitespace()
            .nth(1)?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        (ppid == me && cmdline.split(|&b| b == 0).any(|a| a == want)).then_some(pid)
    })
}

/// "Max open files" soft limit of a process, as /proc shows it.
fn nofile_limit(pid: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
        })
        .unwrap_or_else(|| "?".into())
}

/// Two sockets per loopback session (ours and the controller's, both
/// inherited limits): raise the soft file limit to the hard one before the
/// controller is spawned.
#[cfg(target_os = "linux")]
fn raise_nofile() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    lim.current = lim.maximum;
    if let Err(e) = setrlimit(Resource::Nofile, lim) {
        eprintln!("bench-controller: cannot raise the open files limit: {e}");
    }
    getrlimit(Resource::Nofile).current
}

#[cfg(not(target_os = "linux"))]
fn raise_nofile() -> Option<u64> {
    None
}

// ---- shared counters -------------------------------------------------------

const WARMUP: u8 = 0;
const MEASURING: u8 = 1;
const AFTER: u8 = 2;

/// Cumulative counters: the window's figures are differences of two
/// snapshots. Latency samples are only kept for reports sent in the window.
#[derive(Debug, Default)]
struct Stats {
    phase: AtomicU8,
    /// Policies are being applied (and pushed) now.
    applying: AtomicBool,
    open: AtomicI64,
    opens: AtomicU64,
    drops: AtomicU64,
    connect_failures: AtomicU64,
    /// Acks received, in any phase (for the progress line).
    acked: AtomicU64,
    // Reports of the window: sent, acknowledged, never acknowledged (a
    // later one was, or the session ended), not sent because the session's
    // queue was full.
    sent: AtomicU64,
    acked_in_window: AtomicU64,
    lost: AtomicU64,
    skipped: AtomicU64,
    /// Reports sent in the window still waiting for their ack.
    pending_in_window: AtomicI64,
    policies: AtomicU64,
    rosters: AtomicU64,
    roster_bytes: AtomicU64,
    revocations: AtomicU64,
    other_updates: AtomicU64,
    /// Largest ack latency since the progress line last took it, µs.
    recent_max_us: AtomicU64,
    /// The same, for the settling check.
    settle_max_us: AtomicU64,
    periodic_quiet_us: Mutex<Vec<u32>>,
    periodic_applying_us: Mutex<Vec<u32>>,
    on_policy_us: Mutex<Vec<u32>>,
    /// (policy version, when a session received it or a newer one), in the
    /// window.
    receipts: Mutex<Vec<(u64, Instant)>>,
    drop_reasons: Mutex<HashMap<String, u64>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Snapshot {
    opens: u64,
    drops: u64,
    connect_failures: u64,
    policies: u64,
    rosters: u64,
    roster_bytes: u64,
    revocations: u64,
}

impl Stats {
    fn measuring(&self) -> bool {
        self.phase.load(Ordering::Relaxed) == MEASURING
    }

    fn snapshot(&self) -> Snapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Snapshot {
            opens: l(&self.opens),
            drops: l(&self.drops),
            connect_failures: l(&self.connect_failures),
            policies: l(&self.policies),
            rosters: l(&self.rosters),
            roster_bytes: l(&self.roster_bytes),
            revocations: l(&self.revocations),
        }
    }

    fn push(v: &Mutex<Vec<u32>>, d: Duration) {
        let us = u32::try_from(d.as_micros()).unwrap_or(u32::MAX);
        v.lock().unwrap_or_else(|p| p.into_inner()).push(us);
    }

    fn dropped(&self, reason: String) {
        self.drops.fetch_add(1, Ordering::Relaxed);
        *self
            .drop_reasons
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason)
            .or_default() += 1;
    }
}

impl Snapshot {
    fn since(self, a: Self) -> Self {
        Self {
            opens: self.opens - a.opens,
            drops: self.drops - a.drops,
            connect_failures: self.connect_failures - a.connect_failures,
            policies: self.policies - a.policies,
            rosters: self.rosters - a.rosters,
            roster_bytes: self.roster_bytes - a.roster_bytes,
            revocations: self.revocations - a.revocations,
        }
    }
}

// ---- one simulated agent ---------------------------------------------------

/// An enrolled simulated agent.
#[derive(Debug)]
struct Sim {
    index: u32,
    tls: Arc<rustls::ClientConfig>,
}

/// What every session needs.
#[derive(Debug)]
struct Ctx {
    addr: String,
    interval: Duration,
    agents: u32,
    listen_addrs: bool,
    /// Reports are scheduled from here, agent i at i/N of the interval.
    epoch: tokio::time::Instant,
    stats: Stats,
    connect: Semaphore,
    stop: CancellationToken,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Periodic,
    OnPolicy,
}

#[derive(Debug)]
struct Pending {
    seq: u64,
    sent: Instant,
    kind: Kind,
    in_window: bool,
    applying: bool,
}

/// Dials the controller as the agent does (TLS 1.3, its client certificate,
/// the controller verified against the CA), with small HTTP/2 windows.
async fn connect(addr: &str, tls: Arc<rustls::ClientConfig>) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    let connector = TlsConnector::from(tls);
    let target = addr.to_owned();
    let dial = endpoint.connect_with_connector(tower::service_fn(move |_uri| {
        let (connector, target) = (connector.clone(), target.clone());
        async move {
            let tcp = TcpStream::connect(&target).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name_for(None), tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    }));
    match tokio::time::timeout(CONNECT_TIMEOUT + HANDSHAKE_TIMEOUT, dial).await {
        Ok(r) => r.map_err(|e| error_chain(&e)),
        Err(_) => Err("connecting timed out".into()),
    }
}

/// Keeps agent `sim`'s session up until stopped, reconnecting with backoff
/// as the real agent does.
async fn run_agent(ctx: Arc<Ctx>, sim: Sim) {
    let mut seq = 0u64;
    let mut reached = 0u64;
    let mut backoff = Duration::from_secs(1);
    while !ctx.stop.is_cancelled() {
        let started = Instant::now();
        match session(&ctx, &sim, &mut seq, &mut reached).await {
            Ok(()) => return,
            Err(Failure::Connect(e)) => {
                ctx.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                ctx.stats.dropped(format!("connect: {e}"));
            }
            Err(Failure::Session(e)) => ctx.stats.dropped(e),
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_secs(1);
        }
        // Jitter in [d/2, d], spread by agent so retries do not line up.
        let jitter = backoff.mul_f64(0.5 + f64::from(sim.index % 97) / 194.0);
        tokio::select! {
            _ = ctx.stop.cancelled() => return,
            _ = tokio::time::sleep(jitter) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[derive(Debug)]
enum Failure {
    Connect(String),
    Session(String),
}

/// One session: connect, `Hello`, then a status every interval, each
/// acknowledged; every update is read (and dropped) as it comes.
/// `reached` is the newest policy version received by any session of
/// this agent.
async fn session(ctx: &Ctx, sim: &Sim, seq: &mut u64, reached: &mut u64) -> Result<(), Failure> {
    let stats = &ctx.stats;
    let (tx, rx) = mpsc::channel(REPORT_QUEUE);
    let mut updates = {
        let _permit = tokio::select! {
            _ = ctx.stop.cancelled() => return Ok(()),
            p = ctx.connect.acquire() => p.map_err(|e| Failure::Connect(e.to_string()))?,
        };
        let channel = connect(&ctx.addr, sim.tls.clone())
            .await
            .map_err(Failure::Connect)?;
        // No traffic ever goes to these addresses; they only fill rosters.
        let listen_addrs = if ctx.listen_addrs {
            vec![format!("127.0.0.1:{}", 10_000 + sim.index % 55_000)]
        } else {
            Vec::new()
        };
        let hello = pb::agent_report::Report::Hello(pb::Hello {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            listen_addrs,
            policy_version: 0,
        });
        tx.try_send(pb::AgentReport {
            report: Some(hello),
        })
        .map_err(|e| Failure::Session(e.to_string()))?;
        let mut client = AgentControlClient::new(channel).max_decoding_message_size(MAX_UPDATE);
        match tokio::time::timeout(OPEN_TIMEOUT, client.session(ReceiverStream::new(rx))).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(s)) => {
                return Err(Failure::Connect(format!(
                    "refused: {:?}: {}",
                    s.code(),
                    s.message()
                )));
            }
            Err(_) => return Err(Failure::Connect("session not opened in time".into())),
        }
    };
    stats.opens.fetch_add(1, Ordering::Relaxed);
    stats.open.fetch_add(1, Ordering::Relaxed);

    // Agent i reports at i/N into every interval, counted from one epoch,
    // so reports arrive evenly whatever the order sessions opened in.
    let slot = ctx
        .interval
        .mul_f64(f64::from(sim.index) / f64::from(ctx.agents));
    let mut first = ctx.epoch + slot;
    let now = tokio::time::Instant::now();
    while first < now {
        first += ctx.interval;
    }
    let mut tick = tokio::time::interval_at(first, ctx.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);

    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut policy_version = 0u64;
    let mut report = |kind: Kind, policy_version: u64, pending: &mut VecDeque<Pending>| {
        *seq += 1;
        let status = pb::Status {
            policy_version,
            seq: *seq,
            ..Default::default()
        };
        let msg = pb::AgentReport {
            report: Some(pb::agent_report::Report::Status(status)),
        };
        let in_window = stats.measuring();
        if tx.try_send(msg).is_err() {
            if in_window {
                stats.skipped.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        if in_window {
            stats.sent.fetch_add(1, Ordering::Relaxed);
            stats.pending_in_window.fetch_add(1, Ordering::Relaxed);
        }
        if pending.len() >= MAX_PENDING
            && let Some(p) = pending.pop_front()
        {
            lose(stats, &p);
        }
        pending.push_back(Pending {
            seq: *seq,
            sent: Instant::now(),
            kind,
            in_window,
            applying: stats.applying.load(Ordering::Relaxed),
        });
    };

    let ended = loop {
        tokio::select! {
            _ = ctx.stop.cancelled() => break None,
            _ = tick.tick() => report(Kind::Periodic, policy_version, &mut pending),
            msg = updates.message() => match msg {
                Ok(Some(u)) => match u.update {
                    Some(Update::Ack(a)) => acked(stats, &mut pending, a.seq),
                    Some(Update::Policy(p)) => {
                        stats.policies.fetch_add(1, Ordering::Relaxed);
                        // A session coalescing changes skips versions: every
                        // version up to this one has reached it now.
                        if stats.measuring() && p.version > *reached {
                            let now = Instant::now();
                            stats.receipts.lock().unwrap_or_else(|p| p.into_inner())
                                .extend((*reached + 1..=p.version).map(|v| (v, now)));
                        }
                        *reached = (*reached).max(p.version);
                        policy_version = p.version;
                        // As the agent: report the new version at once.
                        report(Kind::OnPolicy, policy_version, &mut pending);
                    }
                    Some(Update::Roster(r)) => {
                        stats.rosters.fetch_add(1, Ordering::Relaxed);
                        let bytes = prost::Message::encoded_len(&r) as u64;
                        stats.roster_bytes.fetch_add(bytes, Ordering::Relaxed);
                    }
                    Some(Update::Revocations(_)) => {
                        stats.revocations.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        stats.other_updates.fetch_add(1, Ordering::Relaxed);
                    }
                },
                Ok(None) => break Some("the controller closed the session".to_owned()),
                Err(s) => break Some(format!("{:?}: {}", s.code(), s.message())),
            },
        }
    };
    stats.open.fetch_sub(1, Ordering::Relaxed);
    for p in pending.drain(..) {
        lose(stats, &p);
    }
    match ended {
        None => Ok(()),
        Some(why) => Err(Failure::Session(why)),
    }
}

fn lose(stats: &Stats, p: &Pending) {
    if p.in_window {
        stats.lost.fetch_add(1, Ordering::Relaxed);
        stats.pending_in_window.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Settles the reports up to `seq`: that one is acknowledged, earlier ones
/// still waiting never will be.
fn acked(stats: &Stats, pending: &mut VecDeque<Pending>, seq: u64) {
    while let Some(p) = pending.front() {
        if p.seq > seq {
            break;
        }
        let Some(p) = pending.pop_front() else { break };
        if p.seq < seq {
            lose(stats, &p);
            continue;
        }
        stats.acked.fetch_add(1, Ordering::Relaxed);
        let took = p.sent.elapsed();
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        stats.recent_max_us.fetch_max(us, Ordering::Relaxed);
        stats.settle_max_us.fetch_max(us, Ordering::Relaxed);
        if p.in_window {
            stats.acked_in_window.fetch_add(1, Ordering::Relaxed);
            stats.pending_in_window.fetch_sub(1, Ordering::Relaxed);
            match (p.kind, p.applying) {
                (Kind::Periodic, false) => Stats::push(&stats.periodic_quiet_us, took),
                (Kind::Periodic, true) => Stats::push(&stats.periodic_applying_us, took),
                (Kind::OnPolicy, _) => Stats::push(&stats.on_policy_us, took),
            }
        }
    }
}

// ---- enrollment and the admin --------------------------------------------

/// Enrolls agent `index` through the agent's own enrollment code (key and
/// CSR made here, controller pinned by CA fingerprint), then builds its
/// session TLS configuration from the files written.
async fn enroll_one(
    index: u32,
    addr: String,
    token: String,
    fingerprint: String,
    dir: PathBuf,
) -> Result<Sim, String> {
    let out = TlsPaths {
        ca: dir.join("ca.pem"),
        cert: dir.join("agent.pem"),
        key: dir.join("agent.key"),
    };
    let opts = EnrollOptions {
        controller: addr,
        token,
        ca_fingerprint: fingerprint,
        hostname: format!("load-{index:05}"),
        out: out.clone(),
    };
    enroll(&opts).await.map_err(|e| e.to_string())?;
    let identity = TlsIdentity::load(&out).map_err(|e| e.to_string())?;
    let tls = controller_client_config(&identity).map_err(|e| e.to_string())?;
    Ok(Sim { index, tls })
}

async fn enroll_all(
    args: &Args,
    ctl: &ControllerProcess,
    token: &str,
    fingerprint: &str,
    work: &Path,
) -> (Vec<Sim>, Vec<String>) {
    let permits = Arc::new(Semaphore::new(args.enroll_concurrency.max(1)));
    let mut set = JoinSet::new();
    for i in 0..args.agents {
        let (addr, token, fp) = (ctl.addr.clone(), token.to_owned(), fingerprint.to_owned());
        let dir = work.join(format!("agents/{i:05}"));
        let permits = permits.clone();
        set.spawn(async move {
            let _permit = permits.acquire_owned().await.map_err(|e| e.to_string())?;
            enroll_one(i, addr, token, fp, dir).await
        });
    }
    let deadline = tokio::time::Instant::now() + args.ramp_timeout;
    let (mut sims, mut errors) = (Vec::new(), Vec::new());
    let mut last = Instant::now();
    // A controller that stopped answering fails every enrollment after its
    // timeout: give up after a few rounds of them rather than wait them all.
    let mut failed_in_a_row = 0usize;
    let give_up = 2 * args.enroll_concurrency.max(1);
    loop {
        let next = tokio::select! {
            r = set.join_next() => r,
            _ = tokio::time::sleep_until(deadline) => {
                errors.push(format!("{} not enrolled within the ramp timeout", set.len()));
                set.abort_all();
                break;
            }
        };
        match next {
            None => break,
            Some(Ok(Ok(s))) => {
                sims.push(s);
                failed_in_a_row = 0;
            }
            Some(Ok(Err(e))) => {
                errors.push(e);
                failed_in_a_row += 1;
            }
            Some(Err(e)) => {
                errors.push(e.to_string());
                failed_in_a_row += 1;
            }
        }
        if failed_in_a_row >= give_up {
            errors.push(format!(
                "{failed_in_a_row} enrollments in a row failed: {} not tried",
                set.len()
            ));
            set.abort_all();
            break;
        }
        if last.elapsed() >= Duration::from_secs(5) {
            eprintln!("  enrolled {}/{}", sims.len(), args.agents);
            last = Instant::now();
        }
    }
    sims.sort_by_key(|s| s.index);
    (sims, errors)
}

/// An admin channel with the identity the controller wrote on first start.
async fn admin_client(ctl: &ControllerProcess) -> AdminClient<Channel> {
    let dir = ctl.dir.join("data/admin");
    let paths = TlsPaths {
        ca: dir.join("ca.pem"),
        cert: dir.join("admin.pem"),
        key: dir.join("admin.key"),
    };
    let identity = TlsIdentity::load(&paths).expect("the controller's admin identity");
    let tls = controller_client_config(&identity).expect("admin TLS configuration");
    AdminClient::new(connect(&ctl.addr, tls).await.expect("admin connection"))
}

/// Applies `count` small policies for group `load`, `every` apart, until
/// `until`; returns the latency of each and the errors.
async fn applies(
    ctx: Arc<Ctx>,
    mut admin: AdminClient<Channel>,
    count: u32,
    every: Duration,
    until: tokio::time::Instant,
    starts: Arc<Mutex<HashMap<u64, Instant>>>,
) -> (Vec<Duration>, Vec<String>) {
    let (mut took, mut errors) = (Vec::new(), Vec::new());
    let first = tokio::time::Instant::now();
    ctx.stats.applying.store(count > 0, Ordering::Relaxed);
    for k in 0..count {
        let at = first + every * k;
        if at >= until {
            break;
        }
        tokio::time::sleep_until(at).await;
        let yaml = format!(
            "name: load-{k}\ntarget: {{groups: [load]}}\nlimits: {{download_rate: {}Mbit/s}}\n",
            100 + k
        );
        let started = Instant::now();
        let req = pb::ApplyPolicyRequest {
            yaml,
            dry_run: false,
        };
        match tokio::time::timeout(APPLY_TIMEOUT, admin.apply_policy(req)).await {
            Ok(Ok(r)) => {
                took.push(started.elapsed());
                starts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(r.into_inner().version, started);
            }
            Ok(Err(s)) => errors.push(format!("{:?}: {}", s.code(), s.message())),
            Err(_) => errors.push(format!("no answer within {APPLY_TIMEOUT:?}")),
        }
    }
    tokio::time::sleep(APPLY_SETTLE).await;
    ctx.stats.applying.store(false, Ordering::Relaxed);
    (took, errors)
}

/// Waits until the controller has caught up with the ramp-up: over the
/// last interval (in whole seconds), no ack slower than [`SETTLED_ACK`]
/// and acks for at least 90 % of the open sessions. False if that did not
/// happen within `limit`.
async fn settle(ctx: &Ctx, limit: Duration) -> bool {
    let stats = &ctx.stats;
    let started = Instant::now();
    let span = (ctx.interval.as_secs_f64().ceil() as usize).max(1);
    let settled_us = u64::try_from(SETTLED_ACK.as_micros()).unwrap_or(u64::MAX);
    // (acks, slowest ack) of each of the last `span` seconds.
    let mut seconds: VecDeque<(u64, u64)> = VecDeque::new();
    let mut last = stats.acked.load(Ordering::Relaxed);
    stats.settle_max_us.store(0, Ordering::Relaxed);
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.tick().await;
    while started.elapsed() < limit {
        every.tick().await;
        let acked = stats.acked.load(Ordering::Relaxed);
        let slowest = stats.settle_max_us.swap(0, Ordering::Relaxed);
        seconds.push_back((acked - last, slowest));
        last = acked;
        if seconds.len() > span {
            seconds.pop_front();
        }
        if seconds.len() < span {
            continue;
        }
        let acks: u64 = seconds.iter().map(|s| s.0).sum();
        let slowest = seconds.iter().map(|s| s.1).max().unwrap_or(0);
        let open = u64::try_from(stats.open.load(Ordering::Relaxed)).unwrap_or(0);
        if slowest < settled_us && acks * 10 >= open * 9 {
            return true;
        }
    }
    false
}

// ---- reporting ---------------------------------------------------------------

#[derive(Debug, Clone, Copy, Default)]
struct Percentiles {
    count: usize,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Percentiles {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({"count": self.count, "p50_ms": self.p50_ms, "p90_ms": self.p90_ms,
            "p99_ms": self.p99_ms, "max_ms": self.max_ms})
    }
}

/// Nearest-rank percentiles of `us` (microseconds).
fn percentiles(mut us: Vec<u64>) -> Percentiles {
    if us.is_empty() {
        return Percentiles::default();
    }
    us.sort_unstable();
    let at = |q: f64| {
        let rank = (q * us.len() as f64).ceil() as usize;
        us[rank.clamp(1, us.len()) - 1] as f64 / 1000.0
    };
    Percentiles {
        count: us.len(),
        p50_ms: at(0.50),
        p90_ms: at(0.90),
        p99_ms: at(0.99),
        max_ms: at(1.0),
    }
}

fn taken(v: &Mutex<Vec<u32>>) -> Vec<u64> {
    v.lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|&u| u64::from(u))
        .collect()
}

fn row(name: &str, p: &Percentiles) {
    println!(
        "  {name:<26} {:>8} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
        p.count, p.p50_ms, p.p90_ms, p.p99_ms, p.max_ms
    );
}

/// CPU, memory and thread times of the controller and of this process.
#[derive(Debug, Clone, Default)]
struct Usage {
    at: Option<Instant>,
    ctl_cpu: f64,
    own_cpu: f64,
    threads: HashMap<String, (f64, usize)>,
}

impl Usage {
    fn now(pid: &str) -> Self {
        Self {
            at: Some(Instant::now()),
            ctl_cpu: cpu_seconds(pid),
            own_cpu: cpu_seconds("self"),
            threads: thread_cpu(pid),
        }
    }
}

/// Prints a line every 10 s and tracks the controller's largest RSS;
/// ends when `stop` fires.
async fn monitor(ctx: Arc<Ctx>, pid: String, started: Instant, stop: CancellationToken) -> u64 {
    let mut max_rss = 0u64;
    let mut every = tokio::time::interval(Duration::from_secs(1));
    let mut last = (
        Instant::now(),
        cpu_seconds(&pid),
        ctx.stats.acked.load(Ordering::Relaxed),
    );
    let mut n = 0u32;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return max_rss,
            _ = every.tick() => {}
        }
        let rss = status_bytes(&pid, "VmRSS");
        max_rss = max_rss.max(rss);
        n += 1;
        if !n.is_multiple_of(10) {
            continue;
        }
        let s = &ctx.stats;
        let (cpu, acked) = (cpu_seconds(&pid), s.acked.load(Ordering::Relaxed));
        let secs = last.0.elapsed().as_secs_f64().max(0.001);
        let phase = match s.phase.load(Ordering::Relaxed) {
            WARMUP => "ramp/warm-up",
            MEASURING => "measuring",
            _ => "draining",
        };
        eprintln!(
            "[{:>5.0} s] {phase:<12} {} sessions open, {} drops | {:.0} acks/s, max {:.1} ms | controller {:.0}% CPU, {:.0} MiB RSS",
            started.elapsed().as_secs_f64(),
            s.open.load(Ordering::Relaxed),
            s.drops.load(Ordering::Relaxed),
            (acked - last.2) as f64 / secs,
            s.recent_max_us.swap(0, Ordering::Relaxed) as f64 / 1000.0,
            (cpu - last.1) / secs * 100.0,
            rss as f64 / MIB,
        );
        last = (Instant::now(), cpu, acked);
    }
}

/// Why the controller ended sessions, from its log.
fn controller_end_reasons(log: &str) -> Vec<(String, u64)> {
    let mut n: HashMap<String, u64> = HashMap::new();
    for l in log.lines() {
        let l = strip_ansi(l);
        if let Some((_, why)) = l.split_once("session ended: ") {
            let why = why.split(" agent=").next().unwrap_or(why).trim();
            *n.entry(why.to_owned()).or_default() += 1;
        }
    }
    let mut v: Vec<_> = n.into_iter().collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    v
}

/// `line` without terminal colour codes (`ESC [ … m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn top(map: &Mutex<HashMap<String, u64>>, n: usize) -> Vec<(String, u64)> {
    let mut v: Vec<_> = map
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    v.truncate(n);
    v
}

// ---- the run -----------------------------------------------------------------

fn main() {
    let args = Args::parse();
    if args.interval.is_zero() || args.agents == 0 {
        eprintln!("bench-controller: --interval and --agents must be above zero");
        std::process::exit(2);
    }
    let nofile = raise_nofile();
    let work = tempfile::tempdir().expect("tempdir");
    eprintln!("starting shoal-controller …");
    let ctl = ControllerProcess::start(&work.path().join("controller"));
    let pid = controller_pid(&ctl.config).expect("the controller's pid");
    let fingerprint = ctl.fingerprint();
    let token = ctl.token(&["load"], "2h", args.agents.max(1));
    eprintln!(
        "controller pid {pid} on {}; open files limit: ours {}, controller {}",
        ctl.addr,
        nofile.map_or_else(|| "?".into(), |n| n.to_string()),
        nofile_limit(&pid)
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(async {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                eprintln!("bench-controller: interrupted");
                130
            }
            code = run(&args, &ctl, &pid, &token, &fingerprint, work.path()) => code,
        }
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    if let Some(path) = &args.keep_log
        && let Err(e) = std::fs::write(path, ctl.log())
    {
        eprintln!("bench-controller: {}: {e}", path.display());
    }
    drop(ctl);
    drop(work);
    std::process::exit(code);
}

async fn run(
    args: &Args,
    ctl: &ControllerProcess,
    pid: &str,
    token: &str,
    fingerprint: &str,
    work: &Path,
) -> i32 {
    let started = Instant::now();
    eprintln!(
        "enrolling {} agents ({} at a time) …",
        args.agents, args.enroll_concurrency
    );
    let (sims, enroll_errors) = enroll_all(args, ctl, token, fingerprint, work).await;
    let enroll_secs = started.elapsed().as_secs_f64();
    eprintln!("enrolled {} in {enroll_secs:.1} s", sims.len());
    for e in enroll_errors.iter().take(3) {
        eprintln!("  enrollment failed: {e}");
    }
    if enroll_errors.len() > 3
        && let Some(e) = enroll_errors.last()
    {
        eprintln!("  … {} failures in all; the last: {e}", enroll_errors.len());
    }
    if sims.is_empty() {
        eprintln!("bench-controller: no agent enrolled");
        return 1;
    }
    let agents = u32::try_from(sims.len()).unwrap_or(u32::MAX);
    let ctx = Arc::new(Ctx {
        addr: ctl.addr.clone(),
        interval: args.interval,
        agents,
        listen_addrs: !args.no_listen_addrs,
        epoch: tokio::time::Instant::now(),
        stats: Stats::default(),
        connect: Semaphore::new(args.connect_concurrency.max(1)),
        stop: CancellationToken::new(),
    });
    let monitor_stop = CancellationToken::new();
    let monitor = tokio::spawn(monitor(
        ctx.clone(),
        pid.to_owned(),
        started,
        monitor_stop.clone(),
    ));

    eprintln!(
        "opening {agents} sessions ({} at a time) …",
        args.connect_concurrency
    );
    let open_started = Instant::now();
    let mut sessions = JoinSet::new();
    for sim in sims {
        sessions.spawn(run_agent(ctx.clone(), sim));
    }
    let deadline = Instant::now() + args.ramp_timeout;
    while ctx.stats.open.load(Ordering::Relaxed) < i64::from(agents) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let open_secs = open_started.elapsed().as_secs_f64();
    let opened_at = Instant::now();
    let opened = ctx.stats.open.load(Ordering::Relaxed);
    eprintln!("{opened}/{agents} sessions open after {open_secs:.1} s; warming up …");
    tokio::time::sleep(args.warmup).await;
    // The ramp-up (enrollments, every Hello) leaves the controller work to
    // catch up on: the window should not measure that as the applies' cost.
    eprintln!("waiting for the controller to catch up …");
    let settled = settle(&ctx, args.settle_timeout).await;
    let settle_secs = opened_at.elapsed().as_secs_f64();
    if settled {
        eprintln!("settled {settle_secs:.0} s after the sessions opened");
    } else {
        eprintln!(
            "bench-controller: not settled within {:?}; measuring anyway",
            args.settle_timeout
        );
    }

    // The window.
    let admin = admin_client(ctl).await;
    let open_at_start = ctx.stats.open.load(Ordering::Relaxed);
    let (u0, s0) = (Usage::now(pid), ctx.stats.snapshot());
    ctx.stats.phase.store(MEASURING, Ordering::Relaxed);
    let window_end = tokio::time::Instant::now() + args.duration;
    let starts: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let apply_task = tokio::spawn(applies(
        ctx.clone(),
        admin,
        args.applies,
        args.apply_every,
        window_end,
        starts.clone(),
    ));
    tokio::time::sleep_until(window_end).await;
    ctx.stats.phase.store(AFTER, Ordering::Relaxed);
    let (u1, s1) = (Usage::now(pid), ctx.stats.snapshot());
    let open_at_end = ctx.stats.open.load(Ordering::Relaxed);
    let (rss, hwm) = (status_bytes(pid, "VmRSS"), status_bytes(pid, "VmHWM"));
    let (own_rss, own_hwm) = (status_bytes("self", "VmRSS"), status_bytes("self", "VmHWM"));

    let drain = Instant::now();
    while ctx.stats.pending_in_window.load(Ordering::Relaxed) > 0 && drain.elapsed() < DRAIN_LIMIT {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let unsettled = ctx.stats.pending_in_window.load(Ordering::Relaxed).max(0);
    let (apply_took, apply_errors) =
        match tokio::time::timeout(APPLY_TIMEOUT + APPLY_SETTLE, apply_task).await {
            Ok(Ok(r)) => r,
            _ => (Vec::new(), vec!["the apply task did not finish".into()]),
        };
    ctx.stop.cancel();
    let stopping = tokio::time::timeout(STOP_LIMIT, async {
        while sessions.join_next().await.is_some() {}
    });
    if stopping.await.is_err() {
        eprintln!("bench-controller: some sessions did not stop in time");
        sessions.abort_all();
    }
    monitor_stop.cancel();
    let max_rss = monitor.await.unwrap_or(0);
    // Give the controller a moment to log the sessions' ends.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Figures.
    let w = s1.since(s0);
    let secs = u1
        .at
        .zip(u0.at)
        .map_or(0.0, |(b, a)| b.duration_since(a).as_secs_f64())
        .max(0.001);
    let ctl_cpu = u1.ctl_cpu - u0.ctl_cpu;
    let own_cpu = u1.own_cpu - u0.own_cpu;
    let quiet = percentiles(taken(&ctx.stats.periodic_quiet_us));
    let applying = percentiles(taken(&ctx.stats.periodic_applying_us));
    let on_policy = percentiles(taken(&ctx.stats.on_policy_us));
    let mut all = taken(&ctx.stats.periodic_quiet_us);
    all.extend(taken(&ctx.stats.periodic_applying_us));
    all.extend(taken(&ctx.stats.on_policy_us));
    let status_all = percentiles(all);
    let apply = percentiles(
        apply_took
            .iter()
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            .collect(),
    );
    let starts = starts.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let propagation = percentiles(
        ctx.stats
            .receipts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(|(v, t)| {
                let s = starts.get(v)?;
                u64::try_from(t.saturating_duration_since(*s).as_micros()).ok()
            })
            .collect(),
    );
    let mut threads: Vec<(String, f64, usize)> = u1
        .threads
        .iter()
        .map(|(name, &(cpu, n))| {
            let before = u0.threads.get(name).map_or(0.0, |t| t.0);
            (name.clone(), cpu - before, n)
        })
        .filter(|t| t.1 > 0.0)
        .collect();
    threads.sort_by(|a, b| b.1.total_cmp(&a.1));
    let drop_reasons = top(&ctx.stats.drop_reasons, 5);
    let ctl_reasons = controller_end_reasons(&ctl.log());
    let acks_seen = ctx.stats.acked.load(Ordering::Relaxed);
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let (sent, acked, lost, skipped) = (
        load(&ctx.stats.sent),
        load(&ctx.stats.acked_in_window),
        load(&ctx.stats.lost),
        load(&ctx.stats.skipped),
    );

    println!(
        "\nShoal controller under load: {agents} agents, status every {:?}, {:.0} s measured, {} applies {:?} apart",
        args.interval, secs, apply.count, args.apply_every
    );
    println!(
        "  ramp-up                    enrolled {agents} in {enroll_secs:.1} s; {opened} sessions open after {open_secs:.1} s; {}",
        if settled {
            format!("acks settled {settle_secs:.0} s after that")
        } else {
            format!("acks NOT settled {settle_secs:.0} s after that")
        }
    );
    println!(
        "  sessions                   {open_at_start} open at the window's start, {open_at_end} at its end; \
         {} dropped, {} reopened, {} connect failures in the window ({} drops in all)",
        w.drops,
        w.opens,
        w.connect_failures,
        ctx.stats.drops.load(Ordering::Relaxed)
    );
    println!("  latency (ms)                  count       p50       p90       p99       max");
    row("status → ack, all", &status_all);
    row("  periodic, no apply", &quiet);
    row("  periodic, during applies", &applying);
    row("  on a new policy", &on_policy);
    row("apply (ApplyPolicy)", &apply);
    row("policy reaches a session", &propagation);
    println!(
        "  status reports             {sent} sent, {acked} acked, {lost} never acked, {skipped} skipped (queue full); \
         {unsettled} unsettled after the window"
    );
    println!(
        "  updates received           {} policies, {} rosters ({:.1} MiB), {} revocation lists",
        w.policies,
        w.rosters,
        w.roster_bytes as f64 / MIB,
        w.revocations
    );
    println!(
        "  controller CPU             {ctl_cpu:.1} s in {secs:.0} s = {:.0}% of one core",
        ctl_cpu / secs * 100.0
    );
    println!(
        "  controller RSS             {:.1} MiB at the end, {:.1} MiB sampled max, {:.1} MiB VmHWM",
        rss as f64 / MIB,
        max_rss as f64 / MIB,
        hwm as f64 / MIB
    );
    println!(
        "  load generator             {own_cpu:.1} s CPU = {:.0}% of one core; {:.1} MiB RSS, {:.1} MiB VmHWM",
        own_cpu / secs * 100.0,
        own_rss as f64 / MIB,
        own_hwm as f64 / MIB
    );
    println!(
        "  controller threads (CPU s) {}",
        threads
            .iter()
            .take(6)
            .map(|(n, c, k)| format!("{n} x{k}: {c:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (why, n) in &drop_reasons {
        println!("  session drop (agent side)  {n} x {why}");
    }
    for (why, n) in ctl_reasons.iter().take(5) {
        println!("  session end (controller)   {n} x {why}");
    }
    for e in apply_errors.iter().take(5) {
        println!("  apply failed               {e}");
    }
    if acks_seen == 0 && sent > 0 {
        println!(
            "  NOTE: no StatusAck arrived at all: the controller does not acknowledge status \
             reports (not implemented, or stuck: see its threads and log)"
        );
    }
    let p99_ok = status_all.count > 0 && status_all.p99_ms < 50.0 && apply.p99_ms < 50.0;
    let rss_ok = hwm < (1 << 30);
    println!(
        "  targets                    p99 < 50 ms (status and apply): {}; RSS < 1 GiB: {}",
        if p99_ok { "met" } else { "NOT met" },
        if rss_ok { "met" } else { "NOT met" }
    );

    if let Some(path) = &args.json {
        let v = serde_json::json!({
            "agents": agents, "interval_s": args.interval.as_secs_f64(), "window_s": secs,
            "listen_addrs": !args.no_listen_addrs,
            "enroll_s": enroll_secs, "enroll_errors": enroll_errors.len(),
            "settled": settled, "settle_s": settle_secs,
            "sessions": {"opened_after_ramp": opened, "open_s": open_secs,
                "open_at_start": open_at_start, "open_at_end": open_at_end,
                "dropped_in_window": w.drops, "reopened_in_window": w.opens,
                "connect_failures_in_window": w.connect_failures,
                "drop_reasons": drop_reasons, "controller_end_reasons": ctl_reasons},
            "status_ack_ms": status_all.json(), "status_ack_periodic_quiet_ms": quiet.json(),
            "status_ack_periodic_during_applies_ms": applying.json(),
            "status_ack_on_policy_ms": on_policy.json(), "apply_ms": apply.json(),
            "policy_propagation_ms": propagation.json(), "apply_errors": apply_errors,
            "reports": {"sent": sent, "acked": acked, "never_acked": lost,
                "skipped": skipped, "unsettled": unsettled},
            "updates": {"policies": w.policies, "rosters": w.rosters,
                "roster_bytes": w.roster_bytes, "revocations": w.revocations},
            "controller": {"cpu_s": ctl_cpu, "cpu_percent_of_core": ctl_cpu / secs * 100.0,
                "rss_bytes": rss, "rss_sampled_max_bytes": max_rss, "vm_hwm_bytes": hwm,
                "threads": threads.iter().map(|(n, c, k)| serde_json::json!({"name": n, "threads": k, "cpu_s": c})).collect::<Vec<_>>()},
            "load_generator": {"cpu_s": own_cpu, "cpu_percent_of_core": own_cpu / secs * 100.0,
                "rss_bytes": own_rss, "vm_hwm_bytes": own_hwm},
            "targets_met": {"p99_under_50ms": p99_ok, "rss_under_1gib": rss_ok},
        });
        let bytes = serde_json::to_vec_pretty(&v).expect("json");
        if let Err(e) = std::fs::write(path, bytes) {
            eprintln!("bench-controller: {}: {e}", path.display());
            return 73;
        }
    }
    0
}

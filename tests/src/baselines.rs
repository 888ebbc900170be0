//! The tools IT uses today, run on the same namespace LAN as Shoal so that
//! `bench-swarm` can compare them: an HTTP fan-out (nginx on the seed,
//! curl on every other host at once) and a BitTorrent swarm (opentracker
//! and a seeding aria2c on the seed, aria2c on every other host at once).
//!
//! Also what every method of that benchmark shares: one tmpfs for all data,
//! installing the tools from Debian, child processes watched for CPU and
//! peak memory until they exit (and killed when dropped, even on a panic),
//! each namespace's interface counters, and checking every copy.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::netns::{Host, Testbed};

/// How often the baselines' watch loop polls processes and markers.
const POLL: Duration = Duration::from_millis(100);
/// How often the timeline records bytes held per host.
pub const TIMELINE_EVERY: Duration = Duration::from_millis(250);
/// nginx's port on the seed.
pub const HTTP_PORT: u16 = 8080;
/// opentracker's port (TCP and UDP) on the seed.
pub const TRACKER_PORT: u16 = 6969;
/// aria2c's BitTorrent port on every host (each host has its own address).
pub const BT_PORT: u16 = 6881;

// ---------------------------------------------------------------------------
// Interrupts

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// From now on SIGINT and SIGTERM do not kill this process: they set a
/// flag that the benchmark's loops check ([`interrupted`]), so that they
/// fail and every guard tears down (processes, tmpfs, namespaces) as on
/// any other error.
pub fn catch_interrupts() -> Result<(), String> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(format!("a runtime for signals: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let (mut int, mut term) = match (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) {
                    (Ok(i), Ok(t)) => (i, t),
                    (Err(e), _) | (_, Err(e)) => {
                        let _ = tx.send(Err(format!("catching signals: {e}")));
                        return;
                    }
                };
                let _ = tx.send(Ok(()));
                loop {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                    eprintln!("bench-swarm: interrupted, tearing down …");
                    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            });
        })
        .map_err(|e| format!("a thread for signals: {e}"))?;
    rx.recv_timeout(Duration::from_secs(10))
        .map_err(|_| "the signal thread did not start".to_owned())?
}

/// Whether SIGINT or SIGTERM arrived since [`catch_interrupts`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}

/// An error once interrupted.
pub fn check_interrupted() -> Result<(), String> {
    if interrupted() {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Running commands

/// A command that ran to its end.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

fn drain<R: Read + Send + 'static>(r: Option<R>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        let _ = tx.send(buf);
    });
    rx
}

/// Runs `cmd` with its output captured; kills it and fails after `timeout`.
pub fn run_bounded(cmd: &mut Command, timeout: Duration, what: &str) -> Result<Finished, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what}: still running after {timeout:?}, killed"));
            }
            Err(e) => return Err(format!("{what}: waiting for it: {e}")),
        }
    };
    // A grandchild may hold the pipes open: do not wait for it forever.
    let text = |rx: mpsc::Receiver<Vec<u8>>| {
        rx.recv_timeout(Duration::from_secs(5))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    Ok(Finished {
        status,
        stdout: text(out),
        stderr: text(err),
    })
}

/// [`run_bounded`], failing unless the command exits 0; its stdout.
pub fn run_ok(cmd: &mut Command, timeout: Duration, what: &str) -> Result<String, String> {
    let f = run_bounded(cmd, timeout, what)?;
    if f.status.success() {
        Ok(f.stdout)
    } else {
        Err(format!(
            "{what} failed ({}): {}{}",
            f.status,
            f.stderr.trim(),
            if f.stderr.trim().is_empty() {
                f.stdout.trim()
            } else {
                ""
            }
        ))
    }
}

/// `ip netns exec NS program`: `ip` execs the program after entering the
/// namespace, so the child's pid is the program's.
pub fn in_ns(ns: &str, program: &Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(program);
    c
}

/// Polls `ready` every 100 ms until it says yes; fails after `timeout`.
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut ready: impl FnMut() -> Result<bool, String>,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        check_interrupted()?;
        if ready()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("{what}: not after {timeout:?}"));
        }
        std::thread::sleep(POLL);
    }
}

// ---------------------------------------------------------------------------
// Tools from Debian

/// A program the benchmark needs and the Debian package that ships it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tool {
    pub program: &'static str,
    pub package: &'static str,
}

pub const NGINX: Tool = Tool {
    program: "nginx",
    package: "nginx-light",
};
pub const CURL: Tool = Tool {
    program: "curl",
    package: "curl",
};
pub const ARIA2C: Tool = Tool {
    program: "aria2c",
    package: "aria2",
};
pub const OPENTRACKER: Tool = Tool {
    program: "opentracker",
    package: "opentracker",
};
pub const MKTORRENT: Tool = Tool {
    program: "mktorrent",
    package: "mktorrent",
};

/// The font the plots' text is drawn with, and its package.
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const FONT_PACKAGE: &str = "fonts-dejavu-core";

/// Where `program` is: `PATH`, then the sbin directories (nginx lives in
/// /usr/sbin, which a user's `PATH` may lack).
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            [
                "/usr/local/sbin",
                "/usr/local/bin",
                "/usr/sbin",
                "/usr/bin",
                "/sbin",
                "/bin",
            ]
            .map(PathBuf::from),
        )
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// `program`'s path; an error naming the package when it is missing.
pub fn program(tool: Tool) -> Result<PathBuf, String> {
    find_program(tool.program).ok_or_else(|| {
        format!(
            "{} not found (Debian package {})",
            tool.program, tool.package
        )
    })
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// While it lives, `/usr/sbin/policy-rc.d` exits 101, so that package
/// scripts start no service (nginx's would listen on port 80). Removed
/// again only if this made it.
#[derive(Debug)]
struct NoServices {
    created: bool,
}

const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

impl NoServices {
    fn new() -> Result<Self, String> {
        use std::os::unix::fs::PermissionsExt;
        if Path::new(POLICY_RC_D).exists() {
            return Ok(Self { created: false });
        }
        std::fs::write(
            POLICY_RC_D,
            "#!/bin/sh\n# bench-swarm: no services while installing\nexit 101\n",
        )
        .and_then(|()| {
            std::fs::set_permissions(POLICY_RC_D, std::fs::Permissions::from_mode(0o755))
        })
        .map_err(|e| format!("writing {POLICY_RC_D}: {e}"))?;
        Ok(Self { created: true })
    }
}

impl Drop for NoServices {
    fn drop(&mut self) {
        if self.created
            && let Err(e) = std::fs::remove_file(POLICY_RC_D)
        {
            eprintln!("bench-swarm: removing {POLICY_RC_D}: {e}");
        }
    }
}

/// Installs from Debian whichever of `tools` is missing, and the plots'
/// font when `font`. Needs root for that; does nothing when all is there.
pub fn ensure_installed(tools: &[Tool], font: bool) -> Result<(), String> {
    let mut missing: Vec<&str> = tools
        .iter()
        .filter(|t| find_program(t.program).is_none())
        .map(|t| t.package)
        .collect();
    if font && !Path::new(FONT).is_file() {
        missing.push(FONT_PACKAGE);
    }
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        return Err(format!(
            "missing Debian packages {0}: run as root (the harness installs them) or \
             `apt-get install --no-install-recommends {0}`",
            missing.join(" ")
        ));
    }
    eprintln!("installing {} from Debian …", missing.join(" "));
    let _no_services = NoServices::new()?;
    run_ok(
        Command::new("apt-get").args(["update", "-q"]),
        Duration::from_secs(600),
        "apt-get update",
    )?;
    run_ok(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
        Duration::from_secs(900),
        "apt-get install",
    )?;
    for t in tools {
        program(*t)?;
    }
    if font && !Path::new(FONT).is_file() {
        return Err(format!(
            "{FONT} is still missing after installing {FONT_PACKAGE}"
        ));
    }
    Ok(())
}

/// The installed Debian version of `package`, or "?".
pub fn package_version(package: &str) -> String {
    run_ok(
        Command::new("dpkg-query").args(["-W", "-f=${Version}", package]),
        Duration::from_secs(30),
        "dpkg-query",
    )
    .map(|v| v.trim().to_owned())
    .unwrap_or_else(|_| "?".into())
}

// ---------------------------------------------------------------------------
// Memory and the tmpfs

/// `MemAvailable` from /proc/meminfo, bytes.
pub fn mem_available() -> Result<u64, String> {
    let s = std::fs::read_to_string("/proc/meminfo").map_err(|e| format!("/proc/meminfo: {e}"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| "no MemAvailable in /proc/meminfo".into())
}

/// A tmpfs mounted for the benchmark; unmounted when dropped (a panic
/// included), lazily if something still holds it.
#[derive(Debug)]
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of at most `size` bytes at `path` (made if missing).
    pub fn mount(path: &Path, size: u64) -> Result<Self, String> {
        std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()))?;
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size={size},mode=0755"))
                .arg("shoal-bench")
                .arg(path),
            Duration::from_secs(30),
            "mount -t tmpfs",
        )?;
        Ok(Self {
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let umount = |lazy: bool| {
            let mut c = Command::new("umount");
            if lazy {
                c.arg("-l");
            }
            run_ok(c.arg(&self.path), Duration::from_secs(30), "umount")
        };
        if let Err(e) = umount(false) {
            eprintln!("bench-swarm: {e}; unmounting lazily");
            if let Err(e) = umount(true) {
                eprintln!("bench-swarm: {e}: {} stays mounted", self.path.display());
            }
        }
    }
}

/// Where every method of a run keeps its data: all on one tmpfs, or all
/// on the disk under the run's temporary directory.
#[derive(Debug)]
pub enum Storage {
    Tmpfs(Tmpfs),
    Disk(PathBuf),
}

impl Storage {
    pub fn path(&self) -> &Path {
        match self {
            Storage::Tmpfs(t) => t.path(),
            Storage::Disk(p) => p,
        }
    }

    /// Writes dirty pages back, so one method's writeback does not run
    /// on the CPU during the next.
    pub fn settle(&self) {
        if let Storage::Disk(_) = self {
            let _ = run_ok(&mut Command::new("sync"), Duration::from_secs(300), "sync");
        }
    }
}

/// Where a benchmark keeps its data (`--storage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StorageKind {
    /// Under the run's temporary directory, on the disk.
    Disk,
    /// One tmpfs mounted there for the run.
    Tmpfs,
}

/// Makes `data` (on the disk, or a tmpfs of `need` bytes mounted there),
/// after checking that `need` bytes fit: `what` says what they are for,
/// `fewer` how to ask for less, for the message when they do not.
pub fn prepare_storage(
    kind: StorageKind,
    data: &Path,
    need: u64,
    what: &str,
    fewer: &str,
) -> Result<Storage, String> {
    match kind {
        StorageKind::Tmpfs => {
            let headroom = 1u64 << 30;
            let available = mem_available()?;
            if available < need + headroom {
                return Err(format!(
                    "not enough free memory: the tmpfs for {what} is {} MiB, and the \
                     processes need about {} MiB more, but MemAvailable is {} MiB; use \
                     --storage disk, {fewer}",
                    need >> 20,
                    headroom >> 20,
                    available >> 20
                ));
            }
            Ok(Storage::Tmpfs(Tmpfs::mount(data, need)?))
        }
        StorageKind::Disk => {
            std::fs::create_dir_all(data).map_err(|e| format!("{}: {e}", data.display()))?;
            let available = disk_available(data)?;
            if available < need {
                return Err(format!(
                    "not enough disk: {what} is {} MiB, but {} has {} MiB free; {fewer}",
                    need >> 20,
                    data.display(),
                    available >> 20
                ));
            }
            Ok(Storage::Disk(data.to_owned()))
        }
    }
}

/// Free bytes on the file system holding `path`.
pub fn disk_available(path: &Path) -> Result<u64, String> {
    let out = run_ok(
        Command::new("df").args(["-B1", "--output=avail"]).arg(path),
        Duration::from_secs(30),
        "df",
    )?;
    out.lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| format!("df printed no free space for {}: {out:?}", path.display()))
}

// ---------------------------------------------------------------------------
// Processes

/// CPU and memory of one process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcStats {
    /// User + system seconds over the measured span.
    pub cpu_s: f64,
    /// High-water mark of its resident set (`VmHWM`), bytes.
    pub peak_rss: u64,
}

impl ProcStats {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({"cpu_s": self.cpu_s, "peak_rss_bytes": self.peak_rss})
    }
}

/// User + system CPU seconds of a process (also of a zombie: the kernel
/// keeps them until it is reaped).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.get(s.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some(ticks / 100.0)
}

/// `VmHWM` of a live process, bytes (a zombie has none).
pub fn peak_rss(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// A child process watched from /proc: CPU and `VmHWM` sampled while it
/// runs, the final CPU read from the zombie before reaping it. Killed
/// (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct Watched {
    pub name: String,
    child: Child,
    pid: u32,
    log: PathBuf,
    cpu_base: f64,
    cpu: f64,
    hwm: u64,
    exit: Option<ExitStatus>,
}

impl Watched {
    /// Spawns `cmd` with stdout and stderr going to `log`.
    pub fn spawn(mut cmd: Command, name: &str, log: &Path) -> Result<Self, String> {
        let file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let file2 = file
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(file2)
            .spawn()
            .map_err(|e| format!("starting {name}: {e}"))?;
        let pid = child.id();
        let mut w = Self {
            name: name.to_owned(),
            child,
            pid,
            log: log.to_owned(),
            cpu_base: 0.0,
            cpu: 0.0,
            hwm: 0,
            exit: None,
        };
        w.sample();
        Ok(w)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Reads CPU and `VmHWM` now (while it runs).
    pub fn sample(&mut self) {
        if self.exit.is_some() {
            return;
        }
        if let Some(c) = cpu_seconds(self.pid) {
            self.cpu = self.cpu.max(c);
        }
        if let Some(r) = peak_rss(self.pid) {
            self.hwm = self.hwm.max(r);
        }
    }

    /// Counts CPU from now on: for a process started before the timed part.
    pub fn reset_cpu(&mut self) {
        self.sample();
        self.cpu_base = self.cpu;
    }

    /// Its exit status once it has exited (reaped here, after reading its
    /// final CPU time); `None` while it runs.
    pub fn poll_exit(&mut self) -> Result<Option<ExitStatus>, String> {
        use rustix::process::{Pid, WaitId, WaitIdOptions, waitid};
        if self.exit.is_some() {
            return Ok(self.exit);
        }
        self.sample();
        let exited = waitid(
            WaitId::Pid(Pid::from_child(&self.child)),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT,
        )
        .map_err(|e| format!("waitid({}): {e}", self.name))?;
        if exited.is_none() {
            return Ok(None);
        }
        if let Some(c) = cpu_seconds(self.pid) {
            self.cpu = self.cpu.max(c);
        }
        let status = self
            .child
            .wait()
            .map_err(|e| format!("reaping {}: {e}", self.name))?;
        self.exit = Some(status);
        Ok(self.exit)
    }

    /// CPU since [`Self::reset_cpu`] (or the start) and peak RSS so far.
    pub fn stats(&self) -> ProcStats {
        ProcStats {
            cpu_s: (self.cpu - self.cpu_base).max(0.0),
            peak_rss: self.hwm,
        }
    }

    /// Samples it one last time, kills it and reaps it.
    pub fn stop(&mut self) -> ProcStats {
        self.sample();
        if self.exit.is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
        self.stats()
    }

    /// The last lines of its output.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// An error if it has exited (for a server that must keep running).
    pub fn check_running(&mut self) -> Result<(), String> {
        match self.poll_exit()? {
            None => Ok(()),
            Some(status) => Err(format!(
                "{} exited ({status}); its output:\n{}",
                self.name,
                self.log_tail()
            )),
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// Network counters, payload, copies

/// Counters of one network interface (whole frames).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkBytes {
    pub name: String,
    pub rx: u64,
    pub tx: u64,
}

/// Bytes received and sent so far on every interface of namespace `ns`
/// but loopback, or only on `dev`.
pub fn link_bytes(ns: &str, dev: Option<&str>) -> Result<Vec<LinkBytes>, String> {
    let mut cmd = Command::new("ip");
    cmd.args(["-n", ns, "-s", "-j", "link", "show"]);
    if let Some(d) = dev {
        cmd.arg(d);
    }
    let out = run_ok(&mut cmd, Duration::from_secs(10), "ip -s -j link show")?;
    let v: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| format!("ip -j output of {ns}: {e}"))?;
    let links = v
        .as_array()
        .ok_or_else(|| format!("ip -j output of {ns} is not a list: {out}"))?;
    links
        .iter()
        .filter(|l| l["ifname"] != "lo")
        .map(|l| {
            let name = l["ifname"].as_str().unwrap_or("?").to_owned();
            let count = |dir: &str| {
                l["stats64"][dir]["bytes"]
                    .as_u64()
                    .ok_or_else(|| format!("no stats64.{dir}.bytes for {name} in {ns}: {out}"))
            };
            Ok(LinkBytes {
                rx: count("rx")?,
                tx: count("tx")?,
                name: name.clone(),
            })
        })
        .collect()
}

/// `eth0`'s counters in namespace `ns`.
pub fn eth0_bytes(ns: &str) -> Result<LinkBytes, String> {
    link_bytes(ns, Some("eth0"))?
        .pop()
        .ok_or_else(|| format!("no eth0 in {ns}"))
}

/// Bytes sent so far on `eth0` in namespace `ns` (whole frames).
pub fn tx_bytes(ns: &str) -> Result<u64, String> {
    eth0_bytes(ns).map(|l| l.tx)
}

/// Bytes received so far on `eth0` of every host, in order.
pub fn rx_all(tb: &Testbed) -> Result<Vec<u64>, String> {
    tb.hosts
        .iter()
        .map(|h| eth0_bytes(&h.ns).map(|l| l.rx))
        .collect()
}

/// [`tx_bytes`] of every host, in order.
pub fn tx_all(tb: &Testbed) -> Result<Vec<u64>, String> {
    tb.hosts.iter().map(|h| tx_bytes(&h.ns)).collect()
}

/// The content every method distributes: one file.
#[derive(Debug, Clone)]
pub struct Payload {
    pub path: PathBuf,
    pub size: u64,
    pub hash: blake3::Hash,
}

impl Payload {
    pub fn new(path: &Path) -> Result<Self, String> {
        let size = std::fs::metadata(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        Ok(Self {
            path: path.to_owned(),
            size,
            hash: blake3_file(path)?,
        })
    }

    /// Its file name (what the HTTP URL and the torrent call it).
    pub fn name(&self) -> &str {
        self.path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("payload.bin")
    }

    /// Fails unless `path` holds exactly this content.
    pub fn verify(&self, path: &Path) -> Result<(), String> {
        let size = std::fs::metadata(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        if size != self.size {
            return Err(format!(
                "{}: {size} bytes, expected {}",
                path.display(),
                self.size
            ));
        }
        let got = blake3_file(path)?;
        if got != self.hash {
            return Err(format!(
                "{}: BLAKE3 {got}, expected {}",
                path.display(),
                self.hash
            ));
        }
        Ok(())
    }
}

pub fn blake3_file(path: &Path) -> Result<blake3::Hash, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut h = blake3::Hasher::new();
    h.update_reader(f)
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    Ok(h.finalize())
}

/// Bytes of `path` actually stored (allocated blocks, at most `size`; 0
/// while it does not exist). A sparse file written out of order, as aria2c
/// writes pieces without preallocation, counts what it holds, not its
/// length.
pub fn held_bytes(path: &Path, size: u64) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| (m.blocks() * 512).min(size))
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Results

/// What one method did on the testbed.
#[derive(Debug, Clone)]
pub struct MethodResult {
    pub method: String,
    /// From the start of the timed part to the last host's verified copy.
    pub makespan_s: f64,
    /// When each receiving host (hosts 1..=N) had a verified copy.
    pub completion_s: Vec<f64>,
    /// Bytes each receiving host held, over time.
    pub timeline: Vec<(f64, Vec<u64>)>,
    /// `eth0` tx bytes of every host (seed first) over the timed part.
    pub tx_bytes: Vec<u64>,
    /// Bytes uploaded per host (seed first) as the upload plot shows them:
    /// the method's own count when it keeps one, else `tx_bytes`.
    pub uploaded: Vec<u64>,
    /// Where `uploaded` comes from.
    pub uploaded_source: &'static str,
    /// The processes on the seed host.
    pub seed_procs: Vec<(String, ProcStats)>,
    /// The client process of each receiving host.
    pub host_procs: Vec<ProcStats>,
    /// Name of the receiving hosts' process.
    pub host_proc_name: String,
    /// Method-specific figures.
    pub extra: serde_json::Value,
}

impl MethodResult {
    /// CPU seconds of all processes on the seed host.
    pub fn seed_cpu(&self) -> f64 {
        self.seed_procs.iter().map(|(_, p)| p.cpu_s).sum()
    }

    /// Peak RSS of the seed host: the sum of its processes' peaks.
    pub fn seed_rss(&self) -> u64 {
        self.seed_procs.iter().map(|(_, p)| p.peak_rss).sum()
    }

    pub fn host_cpu_mean(&self) -> f64 {
        let n = self.host_procs.len().max(1) as f64;
        self.host_procs.iter().map(|p| p.cpu_s).sum::<f64>() / n
    }

    pub fn host_cpu_max(&self) -> f64 {
        self.host_procs.iter().map(|p| p.cpu_s).fold(0.0, f64::max)
    }

    pub fn host_rss_max(&self) -> u64 {
        self.host_procs
            .iter()
            .map(|p| p.peak_rss)
            .max()
            .unwrap_or(0)
    }

    /// The seed's `eth0` tx over the timed part, in copies of `size`.
    pub fn seed_copies(&self, size: u64) -> f64 {
        self.tx_bytes.first().copied().unwrap_or(0) as f64 / size as f64
    }

    pub fn json(&self, size: u64, ideal_s: f64) -> serde_json::Value {
        serde_json::json!({
            "method": self.method,
            "makespan_s": self.makespan_s,
            "ideal_s": ideal_s,
            "ratio": self.makespan_s / ideal_s,
            "seed_upload_copies": self.seed_copies(size),
            "completion_s": self.completion_s,
            "tx_bytes": self.tx_bytes,
            "uploaded_bytes": self.uploaded,
            "uploaded_source": self.uploaded_source,
            "seed_processes": self.seed_procs.iter().map(|(n, p)| {
                let mut v = p.json();
                v["name"] = n.clone().into();
                v
            }).collect::<Vec<_>>(),
            "host_process": self.host_proc_name,
            "host_processes": self.host_procs.iter().map(ProcStats::json).collect::<Vec<_>>(),
            "host_cpu_mean_s": self.host_cpu_mean(),
            "host_cpu_max_s": self.host_cpu_max(),
            "host_peak_rss_max_bytes": self.host_rss_max(),
            "extra": self.extra,
            "timeline": self.timeline.iter()
                .map(|(t, b)| serde_json::json!({"t": t, "bytes": b}))
                .collect::<Vec<_>>(),
        })
    }
}

// ---------------------------------------------------------------------------
// The baselines

/// Where a baseline runs: the testbed (host 0 seeds), an empty directory
/// of its own on the tmpfs, the payload (on the same tmpfs), and how long
/// the distribution may take.
#[derive(Debug)]
pub struct Setup<'a> {
    pub tb: &'a Testbed,
    pub dir: PathBuf,
    pub payload: &'a Payload,
    pub timeout: Duration,
}

/// How a receiving host shows it is done.
#[derive(Debug)]
enum DoneWhen {
    /// The client exits 0 (curl).
    Exit,
    /// The client writes this file and keeps running (aria2c, seeding).
    Marker(PathBuf),
}

#[derive(Debug)]
struct Receiver {
    proc: Watched,
    file: PathBuf,
    done: DoneWhen,
    done_at: Option<f64>,
}

fn mkdir(p: &Path) -> Result<(), String> {
    std::fs::create_dir_all(p).map_err(|e| format!("{}: {e}", p.display()))
}

fn write(p: &Path, text: &str) -> Result<(), String> {
    std::fs::write(p, text).map_err(|e| format!("{}: {e}", p.display()))
}

/// Polls every 100 ms until every receiver is done: samples every process,
/// records when each receiver finished and, every 250 ms, what each holds.
fn watch(
    started: Instant,
    s: &Setup,
    servers: &mut [&mut Watched],
    rx: &mut [Receiver],
) -> Result<Vec<(f64, Vec<u64>)>, String> {
    let mut timeline = Vec::new();
    let mut next_row = Duration::ZERO;
    loop {
        check_interrupted()?;
        let elapsed = started.elapsed();
        let t = elapsed.as_secs_f64();
        for srv in servers.iter_mut() {
            srv.check_running()?;
        }
        for r in rx.iter_mut() {
            let exited = r.proc.poll_exit()?;
            if r.done_at.is_some() {
                continue;
            }
            let done = match (&r.done, exited) {
                (DoneWhen::Exit, Some(status)) if status.success() => true,
                (DoneWhen::Marker(m), None) => m.exists(),
                (_, None) => false,
                (_, Some(status)) => {
                    return Err(format!(
                        "{} exited ({status}) before it was done; its output:\n{}",
                        r.proc.name,
                        r.proc.log_tail()
                    ));
                }
            };
            if done {
                r.done_at = Some(t);
            }
        }
        let all_done = rx.iter().all(|r| r.done_at.is_some());
        if elapsed >= next_row || all_done {
            let row = rx
                .iter()
                .map(|r| held_bytes(&r.file, s.payload.size))
                .collect();
            timeline.push((t, row));
            next_row = elapsed + TIMELINE_EVERY;
        }
        if all_done {
            return Ok(timeline);
        }
        if elapsed > s.timeout {
            let left: Vec<&str> = rx
                .iter()
                .filter(|r| r.done_at.is_none())
                .map(|r| r.proc.name.as_str())
                .collect();
            return Err(format!(
                "not done after {:?}: {}",
                s.timeout,
                left.join(", ")
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// `curl` in `host`'s namespace: the HTTP status of a HEAD request to `url`,
/// or its body with `body`; `None` when nothing answered.
fn probe(host: &Host, url: &str, body: bool) -> Result<Option<String>, String> {
    let curl = program(CURL)?;
    let mut c = in_ns(&host.ns, &curl);
    c.args(["-s", "--max-time", "2"]);
    if !body {
        c.args(["-I", "-o", "/dev/null", "-w", "%{http_code}"]);
    }
    let f = run_bounded(c.arg(url), Duration::from_secs(10), "curl probe")?;
    Ok(f.status.success().then_some(f.stdout))
}

fn verify_all(s: &Setup, rx: &[Receiver]) -> Result<(), String> {
    for r in rx {
        s.payload
            .verify(&r.file)
            .map_err(|e| format!("{}: {e}", r.proc.name))?;
    }
    Ok(())
}

fn nginx_conf(dir: &Path, root: &Path, ip: std::net::Ipv4Addr) -> String {
    let d = dir.display();
    format!(
        r#"# bench-swarm: one process (no master), so that its pid is the server.
daemon off;
master_process off;
worker_processes 1;
pid "{d}/nginx.pid";
error_log "{d}/error.log" warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    client_body_temp_path "{d}/tmp/body";
    proxy_temp_path "{d}/tmp/proxy";
    fastcgi_temp_path "{d}/tmp/fastcgi";
    uwsgi_temp_path "{d}/tmp/uwsgi";
    scgi_temp_path "{d}/tmp/scgi";
    server {{
        listen {ip}:{HTTP_PORT};
        root "{root}";
    }}
}}
"#,
        root = root.display()
    )
}

/// HTTP fan-out: nginx on the seed serves the payload; every other host
/// downloads it with curl, all at once.
pub fn run_http(s: &Setup) -> Result<MethodResult, String> {
    let (nginx_bin, curl_bin) = (program(NGINX)?, program(CURL)?);
    let seed = &s.tb.hosts[0];
    mkdir(&s.dir.join("tmp"))?;
    let root = s
        .payload
        .path
        .parent()
        .ok_or("the payload has no directory")?;
    let conf = s.dir.join("nginx.conf");
    write(&conf, &nginx_conf(&s.dir, root, seed.ip))?;
    let mut cmd = in_ns(&seed.ns, &nginx_bin);
    cmd.arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(&s.dir)
        .arg("-e")
        .arg(s.dir.join("error.log"));
    let mut nginx = Watched::spawn(cmd, "nginx", &s.dir.join("nginx.out"))?;
    let url = format!("http://{}:{HTTP_PORT}/{}", seed.ip, s.payload.name());
    wait_until(Duration::from_secs(20), "nginx answering", || {
        nginx.check_running()?;
        Ok(probe(seed, &url, false)?.as_deref() == Some("200"))
    })
    .map_err(|e| {
        format!(
            "{e}\n{}",
            std::fs::read_to_string(s.dir.join("error.log")).unwrap_or_default()
        )
    })?;

    let tx0 = tx_all(s.tb)?;
    nginx.reset_cpu();
    let started = Instant::now();
    let mut rx = Vec::new();
    for (i, h) in s.tb.hosts.iter().enumerate().skip(1) {
        let dir = s.dir.join(format!("h{i}"));
        mkdir(&dir)?;
        let file = dir.join(s.payload.name());
        let mut cmd = in_ns(&h.ns, &curl_bin);
        cmd.args(["-sS", "--fail", "--max-time"])
            .arg(s.timeout.as_secs().to_string())
            .arg("-o")
            .arg(&file)
            .arg(&url);
        let proc = Watched::spawn(cmd, &format!("curl on h{i}"), &dir.join("curl.log"))?;
        rx.push(Receiver {
            proc,
            file,
            done: DoneWhen::Exit,
            done_at: None,
        });
    }
    let timeline = watch(started, s, &mut [&mut nginx], &mut rx)?;
    let tx1 = tx_all(s.tb)?;
    let nginx_stats = nginx.stop();
    verify_all(s, &rx)?;
    Ok(finish(
        "http",
        "eth0 tx",
        timeline,
        &tx0,
        &tx1,
        vec![("nginx".into(), nginx_stats)],
        rx,
        "curl",
        serde_json::json!({"url": url}),
    ))
}

#[allow(clippy::too_many_arguments)]
fn finish(
    method: &str,
    uploaded_source: &'static str,
    timeline: Vec<(f64, Vec<u64>)>,
    tx0: &[u64],
    tx1: &[u64],
    seed_procs: Vec<(String, ProcStats)>,
    mut rx: Vec<Receiver>,
    host_proc_name: &str,
    extra: serde_json::Value,
) -> MethodResult {
    let tx: Vec<u64> = tx0
        .iter()
        .zip(tx1)
        .map(|(a, b)| b.saturating_sub(*a))
        .collect();
    let completion_s: Vec<f64> = rx.iter().map(|r| r.done_at.unwrap_or(f64::NAN)).collect();
    let host_procs = rx.iter_mut().map(|r| r.proc.stop()).collect();
    MethodResult {
        method: method.into(),
        makespan_s: completion_s.iter().copied().fold(0.0, f64::max),
        completion_s,
        timeline,
        uploaded: tx.clone(),
        tx_bytes: tx,
        uploaded_source,
        seed_procs,
        host_procs,
        host_proc_name: host_proc_name.into(),
        extra,
    }
}

/// The byte range of the value of `key` in the top-level dictionary of
/// bencoded `data`.
fn bencode_dict_value(data: &[u8], key: &[u8]) -> Result<std::ops::Range<usize>, String> {
    fn skip(d: &[u8], mut i: usize, depth: usize) -> Result<usize, String> {
        let bad = |i| format!("bad bencode at byte {i}");
        if depth > 64 {
            return Err(bad(i));
        }
        match d.get(i).copied() {
            Some(b'i') => {
                let end = d[i..]
                    .iter()
                    .position(|&b| b == b'e')
                    .ok_or_else(|| bad(i))?;
                Ok(i + end + 1)
            }
            Some(b'l' | b'd') => {
                i += 1;
                while d.get(i) != Some(&b'e') {
                    if i >= d.len() {
                        return Err(bad(i));
                    }
                    i = skip(d, i, depth + 1)?;
                }
                Ok(i + 1)
            }
            Some(b'0'..=b'9') => {
                let colon = d[i..]
                    .iter()
                    .position(|&b| b == b':')
                    .ok_or_else(|| bad(i))?;
                let len: usize = std::str::from_utf8(&d[i..i + colon])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| bad(i))?;
                let end = i + colon + 1 + len;
                if end > d.len() {
                    return Err(bad(i));
                }
                Ok(end)
            }
            _ => Err(bad(i)),
        }
    }
    if data.first() != Some(&b'd') {
        return Err("not a bencoded dictionary".into());
    }
    let mut i = 1;
    while data.get(i).is_some_and(|&b| b != b'e') {
        let key_end = skip(data, i, 1)?;
        let colon = data[i..key_end]
            .iter()
            .position(|&b| b == b':')
            .ok_or("a dictionary key is not a string")?;
        let this_key = &data[i + colon + 1..key_end];
        let value_end = skip(data, key_end, 1)?;
        if this_key == key {
            return Ok(key_end..value_end);
        }
        i = value_end;
    }
    Err(format!("no {:?} key", String::from_utf8_lossy(key)))
}

/// The info hash of a .torrent file: SHA-1 of its bencoded `info`, hex.
pub fn info_hash(torrent: &[u8]) -> Result<String, String> {
    use sha1::{Digest, Sha1};
    let range = bencode_dict_value(torrent, b"info")?;
    Ok(Sha1::digest(&torrent[range])
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// aria2c options every host uses. Tracker only (no DHT, no local peer
/// discovery; peer exchange on, as clients have it by default), no peer
/// cap, no upload limit, seed until stopped, no preallocation, no config
/// file of the machine's.
const ARIA2_COMMON: &[&str] = &[
    "--no-conf=true",
    "--enable-dht=false",
    "--enable-dht6=false",
    "--bt-enable-lpd=false",
    "--enable-peer-exchange=true",
    "--disable-ipv6=true",
    "--bt-max-peers=0",
    "--max-overall-upload-limit=0",
    "--seed-ratio=0.0",
    "--file-allocation=none",
    "--summary-interval=0",
    "--console-log-level=warn",
    "--show-console-readout=false",
    "--download-result=hide",
];

/// opentracker's `/stats?mode=peer`: (peers, seeds) it knows.
fn tracker_counts(seed: &Host) -> Result<Option<(u64, u64)>, String> {
    let url = format!("http://{}:{TRACKER_PORT}/stats?mode=peer", seed.ip);
    Ok(probe(seed, &url, true)?.and_then(|body| {
        let mut l = body.lines().map(|l| l.trim().parse::<u64>().ok());
        Some((l.next()??, l.next()??))
    }))
}

/// BitTorrent: opentracker and a seeding aria2c on the seed; every other
/// host runs aria2c at once and keeps seeding after it finishes, until the
/// whole swarm is done.
pub fn run_bittorrent(s: &Setup, piece_size: u64) -> Result<MethodResult, String> {
    let (aria2c, tracker_bin, mktorrent) =
        (program(ARIA2C)?, program(OPENTRACKER)?, program(MKTORRENT)?);
    if !piece_size.is_power_of_two() || !(1 << 15..=1 << 28).contains(&piece_size) {
        return Err(format!(
            "piece size {piece_size}: mktorrent takes powers of two from 32 KiB to 256 MiB"
        ));
    }
    let seed = &s.tb.hosts[0];
    let name = s.payload.name();

    // The seed's copy is a hard link: the same tmpfs pages, no second copy.
    let seed_dir = s.dir.join("h0");
    mkdir(&seed_dir)?;
    std::fs::hard_link(&s.payload.path, seed_dir.join(name))
        .map_err(|e| format!("linking the payload for the seed: {e}"))?;

    let torrent = s.dir.join("payload.torrent");
    let announce = format!("http://{}:{TRACKER_PORT}/announce", seed.ip);
    eprintln!("making the torrent ({} KiB pieces) …", piece_size >> 10);
    run_ok(
        Command::new(&mktorrent)
            .arg("-a")
            .arg(&announce)
            .arg("-l")
            .arg(piece_size.trailing_zeros().to_string())
            .arg("-n")
            .arg(name)
            .arg("-o")
            .arg(&torrent)
            .arg(&s.payload.path),
        Duration::from_secs(1800),
        "mktorrent",
    )?;
    let bytes = std::fs::read(&torrent).map_err(|e| format!("{}: {e}", torrent.display()))?;
    let hash = info_hash(&bytes).map_err(|e| format!("{}: {e}", torrent.display()))?;

    // Debian's opentracker serves only whitelisted torrents; it reads the
    // list after chrooting into its directory, as user nobody.
    let tdir = s.dir.join("tracker");
    mkdir(&tdir)?;
    write(&tdir.join("whitelist.txt"), &format!("{hash}\n"))?;
    let tconf = tdir.join("opentracker.conf");
    write(&tconf, &format!("access.stats {}\n", seed.ip))?;
    let mut cmd = in_ns(&seed.ns, &tracker_bin);
    cmd.arg("-f")
        .arg(&tconf)
        .arg("-i")
        .arg(seed.ip.to_string())
        .arg("-p")
        .arg(TRACKER_PORT.to_string())
        .arg("-P")
        .arg(TRACKER_PORT.to_string())
        .arg("-d")
        .arg(&tdir)
        .args(["-u", "nobody", "-w", "/whitelist.txt"]);
    let mut tracker = Watched::spawn(cmd, "opentracker", &s.dir.join("opentracker.log"))?;
    wait_until(Duration::from_secs(20), "opentracker answering", || {
        tracker.check_running()?;
        Ok(tracker_counts(seed)?.is_some())
    })?;

    let aria2 = |host: &Host, dir: &Path| {
        let mut c = in_ns(&host.ns, &aria2c);
        c.args(ARIA2_COMMON)
            .arg(format!("--listen-port={BT_PORT}"))
            .arg("--dir")
            .arg(dir);
        c
    };
    let mut cmd = aria2(seed, &seed_dir);
    cmd.args(["--check-integrity=false", "--bt-seed-unverified=true"])
        .arg(&torrent);
    let mut seeder = Watched::spawn(cmd, "aria2c seed", &s.dir.join("h0.log"))?;
    wait_until(Duration::from_secs(30), "the seed announced", || {
        seeder.check_running()?;
        tracker.check_running()?;
        Ok(tracker_counts(seed)?.is_some_and(|(_, seeds)| seeds >= 1))
    })?;

    let tx0 = tx_all(s.tb)?;
    seeder.reset_cpu();
    tracker.reset_cpu();
    let started = Instant::now();
    let mut rx = Vec::new();
    for (i, h) in s.tb.hosts.iter().enumerate().skip(1) {
        let dir = s.dir.join(format!("h{i}"));
        mkdir(&dir)?;
        let marker = s.dir.join(format!("h{i}.done"));
        let hook = s.dir.join(format!("h{i}.done.sh"));
        write(&hook, &format!("#!/bin/sh\n: > '{}'\n", marker.display()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| format!("{}: {e}", hook.display()))?;
        }
        let mut cmd = aria2(h, &dir);
        cmd.arg(format!("--on-bt-download-complete={}", hook.display()))
            .arg(&torrent);
        let proc = Watched::spawn(
            cmd,
            &format!("aria2c on h{i}"),
            &s.dir.join(format!("h{i}.log")),
        )?;
        rx.push(Receiver {
            proc,
            file: dir.join(name),
            done: DoneWhen::Marker(marker),
            done_at: None,
        });
    }
    let timeline = watch(started, s, &mut [&mut seeder, &mut tracker], &mut rx)?;
    let tx1 = tx_all(s.tb)?;
    let seeds = vec![
        ("aria2c".to_owned(), seeder.stop()),
        ("opentracker".to_owned(), tracker.stop()),
    ];
    // Stop the leechers (still seeding) before reading their copies.
    for r in &mut rx {
        r.proc.stop();
    }
    verify_all(s, &rx)?;
    Ok(finish(
        "bittorrent",
        "eth0 tx",
        timeline,
        &tx0,
        &tx1,
        seeds,
        rx,
        "aria2c",
        serde_json::json!({
            "info_hash": hash,
            "piece_size": piece_size,
            "announce": announce,
            "aria2c_options": ARIA2_COMMON,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_hash_covers_exactly_the_info_dictionary() {
        let info = b"d6:lengthi5e4:name1:x12:piece lengthi16384e6:pieces20:aaaaaaaaaaaaaaaaaaaae";
        let mut t = b"d8:announce9:http://x/4:info".to_vec();
        t.extend_from_slice(info);
        t.extend_from_slice(b"7:zzzlistl1:ai3eee");
        let range = bencode_dict_value(&t, b"info").expect("info");
        assert_eq!(&t[range], info);
        use sha1::{Digest, Sha1};
        let want: String = Sha1::digest(info)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(info_hash(&t).expect("hash"), want);
        assert!(bencode_dict_value(b"d4:info5:ab", b"info").is_err());
        assert!(bencode_dict_value(b"l4:infoe", b"info").is_err());
    }

    #[test]
    fn watched_reads_the_cpu_of_a_process_that_exited() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"]);
        let mut w = Watched::spawn(cmd, "sh", &dir.path().join("log")).expect("spawn");
        let mut status = None;
        for _ in 0..600 {
            status = w.poll_exit().expect("poll");
            if status.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(status.expect("exited in 30 s").success());
        assert!(w.stats().cpu_s > 0.0, "{:?}", w.stats());
        assert!(w.stats().peak_rss > 0, "{:?}", w.stats());
    }
}

//! A LAN made of Linux network namespaces, for multi-host tests.
//!
//! One bridge in its own namespace (multicast snooping and STP off, so
//! mDNS crosses it like a real switch), N hosts joined by veth pairs, each
//! host on 198.18.0.0/24 (RFC 2544's benchmarking range: it exists only
//! inside these namespaces), with a route for multicast and optional `tc`
//! tbf rate limits on both ends of its link. Dropping the testbed deletes
//! every namespace it made, and with them every link.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// One simulated host.
#[derive(Debug, Clone)]
pub struct Host {
    pub ns: String,
    pub ip: Ipv4Addr,
}

/// The namespaces of one LAN.
#[derive(Debug)]
pub struct Testbed {
    pub hosts: Vec<Host>,
    namespaces: Vec<String>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn in_ns(ns: &str, cmd: &[&str]) -> Result<(), String> {
    let mut args = vec!["netns", "exec", ns];
    args.extend_from_slice(cmd);
    ip(&args)
}

/// Why namespace tests cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    if Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout != b"0\n")
        .unwrap_or(true)
    {
        return Some("needs root to create network namespaces (CI runs as root)".into());
    }
    if Command::new("ip").arg("-V").output().is_err()
        || Command::new("tc").arg("-V").output().is_err()
    {
        return Some("needs iproute2 (ip, tc)".into());
    }
    None
}

impl Testbed {
    /// `n` hosts; `rate` (e.g. "100mbit") caps each link both ways.
    pub fn new(n: usize, rate: Option<&str>) -> Result<Self, String> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "shoal{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut tb = Self {
            hosts: Vec::new(),
            namespaces: Vec::new(),
        };
        let br = format!("{prefix}-br");
        ip(&["netns", "add", &br])?;
        tb.namespaces.push(br.clone());
        ip(&["-n", &br, "link", "set", "lo", "up"])?;
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            &br,
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
            "stp_state",
            "0",
        ])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        for i in 0..n {
            let ns = format!("{prefix}-h{i}");
            ip(&["netns", "add", &ns])?;
            tb.namespaces.push(ns.clone());
            let v = format!("v{i}");
            ip(&[
                "-n", &br, "link", "add", &v, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["-n", &br, "link", "set", &v, "master", "br0", "up"])?;
            let addr = Ipv4Addr::new(198, 18, 0, (i + 1) as u8);
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "brd",
                "+",
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
            if let Some(rate) = rate {
                // A burst under 256 KiB makes tbf split large packets in
                // software, and then the CPU, not the link, is the limit.
                let tbf = [
                    "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", rate, "burst",
                    "256kb", "latency", "100ms",
                ];
                in_ns(&ns, &tbf)?;
                let mut up = tbf;
                up[4] = &v;
                in_ns(&br, &up)?;
            }
            tb.hosts.push(Host { ns, ip: addr });
        }
        Ok(tb)
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// A thread inside one host's network namespace, running a current-thread
/// Tokio runtime: every socket its tasks open (listeners, dials, and the
/// connections tonic makes later) belongs to that host. For in-process
/// peers and raw clients on the testbed. Stops the runtime and joins the
/// thread when dropped.
#[cfg(target_os = "linux")]
#[derive(Debug)]
pub struct NsRuntime {
    ns: String,
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[cfg(target_os = "linux")]
impl NsRuntime {
    /// A runtime on `host`.
    pub fn new(host: &Host) -> Result<Self, String> {
        let ns = host.ns.clone();
        let path = format!("/var/run/netns/{ns}");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("netns {ns}"))
            .spawn(move || {
                // setns(2) moves only this thread; threads it starts later
                // (Tokio's blocking pool) inherit the namespace.
                let enter = || -> Result<tokio::runtime::Runtime, String> {
                    use std::os::fd::AsFd;
                    let file = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
                    rustix::thread::move_into_link_name_space(
                        file.as_fd(),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )
                    .map_err(|e| format!("setns {path}: {e}"))?;
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| format!("runtime: {e}"))
                };
                match enter() {
                    Ok(rt) => {
                        let _ = ready_tx.send(Ok(rt.handle().clone()));
                        rt.block_on(async {
                            let _ = stopped.await;
                        });
                        // Cancels whatever is still spawned on it.
                        rt.shutdown_timeout(std::time::Duration::from_secs(5));
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| format!("spawning a thread: {e}"))?;
        let handle = ready_rx
            .recv()
            .map_err(|_| format!("the thread for {ns} died"))??;
        Ok(Self {
            ns,
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Runs `fut` on the namespace's thread and waits (from a thread that
    /// is not in a runtime) for its output; panics after `timeout`.
    pub fn run<F>(&self, timeout: std::time::Duration, fut: F) -> F::Output
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        let task = self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        match rx.recv_timeout(timeout) {
            Ok(out) => out,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                task.abort();
                panic!("a task in {} took more than {timeout:?}", self.ns)
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                panic!("a task in {} panicked", self.ns)
            }
        }
    }
}

#[cfg(target_os = "linux")]
impl Drop for NsRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

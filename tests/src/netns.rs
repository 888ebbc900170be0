//! A LAN made of Linux network namespaces, for multi-host tests.
//!
//! One bridge in its own namespace (multicast snooping and STP off, so
//! mDNS crosses it like a real switch), N hosts joined by veth pairs, each
//! host on 198.18.0.0/24 (RFC 2544's benchmarking range: it exists only
//! inside these namespaces), with a route for multicast and optional `tc`
//! tbf rate limits on both ends of its link. Dropping the testbed deletes
//! every namespace it made, and with them every link.
//!
//! With several subnets ([`Testbed::builder`], [`Testbed::with_subnets`])
//! each subnet is such a LAN of its own (subnet `s` is 198.18.s.0/24; past
//! 255 it goes on in 198.19.0.0/16), and one router namespace joins them:
//! a veth into every subnet's bridge, address .254 there, IPv4 forwarding
//! on. Hosts route 198.18.0.0/15 (and nothing else) through their subnet's
//! router address. The router does no multicast routing, so mDNS stays
//! inside each subnet, as between real labs: agents in different subnets
//! learn of each other only from the controller's roster or static peers.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// One simulated host.
#[derive(Debug, Clone)]
pub struct Host {
    pub ns: String,
    pub ip: Ipv4Addr,
    /// Which subnet it is on (0 on a single-subnet testbed).
    pub subnet: usize,
}

/// The router joining the subnets of a multi-subnet testbed.
#[derive(Debug, Clone)]
pub struct Router {
    pub ns: String,
    /// Its address on each subnet: `ips[s]` is 198.18.s.254.
    pub ips: Vec<Ipv4Addr>,
}

/// The namespaces of one LAN, or of several subnets and their router.
#[derive(Debug)]
pub struct Testbed {
    /// Every host, subnet by subnet (subnet 0's first).
    pub hosts: Vec<Host>,
    /// `None` on a single-subnet testbed.
    pub router: Option<Router>,
    subnets: usize,
    /// In creation order; deleted in reverse. Filled as construction goes,
    /// so a testbed that fails half-built still removes what it made.
    namespaces: Vec<String>,
}

/// How [`Testbed::builder`] lays out a testbed. Not `Clone`: its prefix
/// names one testbed's namespaces.
#[derive(Debug)]
pub struct TestbedBuilder {
    prefix: String,
    subnets: usize,
    hosts_per_subnet: usize,
    sizes: Option<Vec<usize>>,
    rate: Option<String>,
    router_rate: Option<String>,
}

/// The most subnets a testbed can have: the /24s of 198.18.0.0/15.
pub const MAX_SUBNETS: usize = 512;

/// The router's host number on every subnet of a multi-subnet testbed.
const ROUTER_OCTET: u8 = 254;

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

/// Address `host` on subnet `subnet` (198.18.subnet.host, continuing into
/// 198.19.0.0/16 past subnet 255).
fn subnet_addr(subnet: usize, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18 + (subnet / 256) as u8, (subnet % 256) as u8, host)
}

/// `tc qdisc add dev DEV root tbf rate RATE …` in namespace `ns`.
fn limit(ns: &str, dev: &str, rate: &str) -> Result<(), String> {
    // A burst under 256 KiB makes tbf split large packets in software, and
    // then the CPU, not the link, is the limit.
    in_ns(
        ns,
        &[
            "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst", "256kb",
            "latency", "100ms",
        ],
    )
}

/// Makes namespace `ns` with a bridge `br0` (multicast snooping, STP off,
/// and no firewall on bridged frames).
fn add_bridge(ns: &str) -> Result<(), String> {
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    // Where `br_netfilter` is loaded (Docker loads it), every bridged frame
    // also passes the IP firewall hooks, per packet on the shared cores; a
    // switch does no such thing. The keys are missing where the module is
    // not loaded, and then there is nothing to turn off.
    let _ = in_ns(
        ns,
        &[
            "sysctl",
            "-qw",
            "net.bridge.bridge-nf-call-iptables=0",
            "net.bridge.bridge-nf-call-ip6tables=0",
            "net.bridge.bridge-nf-call-arptables=0",
        ],
    );
    ip(&["-n", ns, "link", "add", "br0", "type", "bridge"])?;
    ip(&[
        "-n",
        ns,
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
    ip(&["-n", ns, "link", "set", "br0", "up"])
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

impl TestbedBuilder {
    /// `k` subnets (1 unless set); with more than one, a router joins them.
    pub fn subnets(mut self, k: usize) -> Self {
        self.subnets = k;
        self
    }

    /// `n` hosts on every subnet.
    pub fn hosts_per_subnet(mut self, n: usize) -> Self {
        self.hosts_per_subnet = n;
        self
    }

    /// Hosts per subnet, one number per subnet (overrides
    /// [`subnets`](Self::subnets) and
    /// [`hosts_per_subnet`](Self::hosts_per_subnet)).
    pub fn subnet_sizes(mut self, sizes: &[usize]) -> Self {
        self.sizes = Some(sizes.to_vec());
        self
    }

    /// Caps every host's link both ways (`tc` rate, e.g. "100mbit").
    pub fn rate(mut self, rate: &str) -> Self {
        self.rate = Some(rate.to_owned());
        self
    }

    /// Caps every router link both ways [default: unlimited].
    pub fn router_rate(mut self, rate: &str) -> Self {
        self.router_rate = Some(rate.to_owned());
        self
    }

    /// Prefix of every namespace the testbed will make (`<prefix>-…`),
    /// unique to this builder: for checking what is left after a failure.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Makes the namespaces and links. On an error, whatever was made is
    /// deleted again before it returns.
    pub fn build(mut self) -> Result<Testbed, String> {
        let sizes = self
            .sizes
            .take()
            .unwrap_or_else(|| vec![self.hosts_per_subnet; self.subnets]);
        let k = sizes.len();
        if k == 0 || k > MAX_SUBNETS {
            return Err(format!("a testbed has 1 to {MAX_SUBNETS} subnets, not {k}"));
        }
        let routed = k > 1;
        // .1 up to .254 on one LAN; the router takes .254 when there is one.
        let max_hosts = if routed { 253 } else { 254 };
        if let Some(n) = sizes.iter().find(|n| **n > max_hosts) {
            return Err(format!(
                "{n} hosts do not fit in a /24 (at most {max_hosts} per subnet)"
            ));
        }
        let prefix = &self.prefix;
        let mut tb = Testbed {
            hosts: Vec::new(),
            router: None,
            subnets: k,
            namespaces: Vec::new(),
        };
        // The same names as a single-subnet testbed always had: `-br`.
        let bridge = |s: usize| {
            if routed {
                format!("{prefix}-br{s}")
            } else {
                format!("{prefix}-br")
            }
        };
        for s in 0..k {
            let br = bridge(s);
            ip(&["netns", "add", &br])?;
            tb.namespaces.push(br.clone());
            add_bridge(&br)?;
        }
        if routed {
            let rt = format!("{prefix}-rt");
            ip(&["netns", "add", &rt])?;
            tb.namespaces.push(rt.clone());
            tb.router = Some(Router {
                ns: rt.clone(),
                ips: Vec::new(),
            });
            ip(&["-n", &rt, "link", "set", "lo", "up"])?;
            in_ns(&rt, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
            for s in 0..k {
                let br = bridge(s);
                let dev = format!("eth{s}");
                ip(&[
                    "-n", &br, "link", "add", "rt", "type", "veth", "peer", "name", &dev, "netns",
                    &rt,
                ])?;
                ip(&["-n", &br, "link", "set", "rt", "master", "br0", "up"])?;
                let addr = subnet_addr(s, ROUTER_OCTET);
                ip(&[
                    "-n",
                    &rt,
                    "addr",
                    "add",
                    &format!("{addr}/24"),
                    "brd",
                    "+",
                    "dev",
                    &dev,
                ])?;
                ip(&["-n", &rt, "link", "set", &dev, "up"])?;
                if let Some(rate) = &self.router_rate {
                    limit(&rt, &dev, rate)?;
                    limit(&br, "rt", rate)?;
                }
                if let Some(r) = tb.router.as_mut() {
                    r.ips.push(addr);
                }
            }
        }
        let mut i = 0;
        for (s, &n) in sizes.iter().enumerate() {
            let br = bridge(s);
            for j in 0..n {
                let ns = format!("{prefix}-h{i}");
                ip(&["netns", "add", &ns])?;
                tb.namespaces.push(ns.clone());
                let v = format!("v{i}");
                ip(&[
                    "-n", &br, "link", "add", &v, "type", "veth", "peer", "name", "eth0", "netns",
                    &ns,
                ])?;
                ip(&["-n", &br, "link", "set", &v, "master", "br0", "up"])?;
                let addr = subnet_addr(s, (j + 1) as u8);
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
                if routed {
                    let via = subnet_addr(s, ROUTER_OCTET).to_string();
                    ip(&[
                        "-n",
                        &ns,
                        "route",
                        "add",
                        "198.18.0.0/15",
                        "via",
                        &via,
                        "dev",
                        "eth0",
                    ])?;
                }
                if let Some(rate) = &self.rate {
                    limit(&ns, "eth0", rate)?;
                    limit(&br, &v, rate)?;
                }
                tb.hosts.push(Host {
                    ns,
                    ip: addr,
                    subnet: s,
                });
                i += 1;
            }
        }
        Ok(tb)
    }
}

impl Testbed {
    /// `n` hosts; `rate` (e.g. "100mbit") caps each link both ways.
    pub fn new(n: usize, rate: Option<&str>) -> Result<Self, String> {
        let b = Self::builder().hosts_per_subnet(n);
        match rate {
            Some(r) => b.rate(r),
            None => b,
        }
        .build()
    }

    /// Subnet `s` with `sizes[s]` hosts, joined by a router when there is
    /// more than one; `rate` caps each host's link both ways.
    pub fn with_subnets(sizes: &[usize], rate: Option<&str>) -> Result<Self, String> {
        let b = Self::builder().subnet_sizes(sizes);
        match rate {
            Some(r) => b.rate(r),
            None => b,
        }
        .build()
    }

    /// One subnet, no hosts, no rate limits, until told otherwise.
    pub fn builder() -> TestbedBuilder {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        TestbedBuilder {
            prefix: format!(
                "shoal{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ),
            subnets: 1,
            hosts_per_subnet: 0,
            sizes: None,
            rate: None,
            router_rate: None,
        }
    }

    /// How many subnets it has.
    pub fn subnets(&self) -> usize {
        self.subnets
    }

    /// The hosts on subnet `s`.
    pub fn hosts_in(&self, s: usize) -> impl Iterator<Item = &Host> {
        self.hosts.iter().filter(move |h| h.subnet == s)
    }

    /// The router's address on subnet `s`, if there is a router.
    pub fn router_ip(&self, s: usize) -> Option<Ipv4Addr> {
        self.router.as_ref()?.ips.get(s).copied()
    }

    /// The router's namespace as a [`Host`] with its address on subnet
    /// `s`: for running a controller ([`crate::controller::ControllerProcess::start_on`])
    /// or an [`NsRuntime`] there.
    pub fn router_host(&self, s: usize) -> Option<Host> {
        let r = self.router.as_ref()?;
        Some(Host {
            ns: r.ns.clone(),
            ip: *r.ips.get(s)?,
            subnet: s,
        })
    }

    /// Every namespace it made, in creation order.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// Network namespaces whose names start with `prefix` (from `ip netns
/// list`): what a testbed left behind, if anything.
pub fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output();
    let Ok(out) = out else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect()
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

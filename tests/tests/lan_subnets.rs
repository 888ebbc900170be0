//! Two subnets joined by a router, as between two labs: mDNS stays inside
//! each subnet (the router does no multicast routing), so agents in
//! different subnets find each other only through the controller's
//! roster. With the controller on the testbed, a package published in
//! subnet 0 reaches subnet 1 through the router, bit-identical. Skips with
//! a message where namespaces cannot be made (needs root; CI runs as root).
#![cfg(target_os = "linux")]

use std::path::Path;
use std::time::{Duration, Instant};

use shoal_agent::config::TlsPaths;
use shoal_proto::chunking::ChunkingSpec;
use shoal_tests::controller::{ControllerProcess, enroll_in, start_agent_in, wait_until};
use shoal_tests::netns::{Host, NsRuntime, Testbed, namespaces_with_prefix, unavailable};
use shoal_tests::process::{
    AgentOptions, AgentProcess, start_on_testbed, wait_complete, wait_for_peers,
};
use shoal_tests::swarm::{Pki, tree_hashes};

const RATE: &str = "100mbit";
const SUBNETS: usize = 2;
const PER_SUBNET: usize = 2;

fn skip(test: &str) -> bool {
    if let Some(why) = unavailable() {
        eprintln!("SKIPPED {test}: {why}");
        return true;
    }
    false
}

fn two_subnets() -> Testbed {
    Testbed::builder()
        .subnets(SUBNETS)
        .hosts_per_subnet(PER_SUBNET)
        .rate(RATE)
        .build()
        .expect("testbed")
}

/// The agent ids of `start_on_testbed` (and of the enrolled agents here).
fn agent_id(i: usize) -> String {
    if i == 0 {
        "seed".to_owned()
    } else {
        format!("host-{i}")
    }
}

/// Ids of the peers `a` knows, from `source` or any source.
fn peer_ids(a: &AgentProcess, source: Option<&str>) -> Vec<String> {
    let run = a.shoal(&["peers", "--json"]);
    if run.code != 0 {
        return Vec::new();
    }
    run.json()
        .as_array()
        .map(|l| {
            l.iter()
                .filter(|p| source.is_none_or(|s| p["source"] == s))
                .filter_map(|p| p["agent_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a TCP connection from `from`'s namespace to `to` succeeds
/// within 5 s.
fn tcp_reaches(from: &Host, to: std::net::SocketAddr) -> bool {
    let rt = NsRuntime::new(from).expect("a runtime in the namespace");
    rt.run(Duration::from_secs(10), async move {
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(to))
            .await
            .is_ok_and(|c| c.is_ok())
    })
}

/// The layout: addresses, router, forwarding, routes across subnets; a
/// single-subnet testbed as it always was; nothing left after a drop or a
/// build that failed half-way.
#[test]
fn subnets_router_and_teardown() {
    if skip("subnets_router_and_teardown") {
        return;
    }
    let single = Testbed::new(2, Some(RATE)).expect("single-subnet testbed");
    assert!(single.router.is_none());
    assert_eq!(single.subnets(), 1);
    let ips: Vec<String> = single.hosts.iter().map(|h| h.ip.to_string()).collect();
    assert_eq!(ips, ["198.18.0.1", "198.18.0.2"]);
    assert!(single.hosts.iter().all(|h| h.subnet == 0));
    drop(single);

    let b = Testbed::builder()
        .subnets(SUBNETS)
        .hosts_per_subnet(PER_SUBNET)
        .rate(RATE)
        .router_rate("1gbit");
    let prefix = format!("{}-", b.prefix());
    let tb = b.build().expect("testbed");
    let ips: Vec<(usize, String)> = tb
        .hosts
        .iter()
        .map(|h| (h.subnet, h.ip.to_string()))
        .collect();
    assert_eq!(
        ips,
        [
            (0, "198.18.0.1".to_owned()),
            (0, "198.18.0.2".to_owned()),
            (1, "198.18.1.1".to_owned()),
            (1, "198.18.1.2".to_owned()),
        ]
    );
    assert_eq!(
        tb.router_ip(0).map(|a| a.to_string()).as_deref(),
        Some("198.18.0.254")
    );
    assert_eq!(
        tb.router_ip(1).map(|a| a.to_string()).as_deref(),
        Some("198.18.1.254")
    );
    assert_eq!(tb.hosts_in(1).count(), PER_SUBNET);
    let router = tb.router.as_ref().expect("a router");
    let fwd = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &router.ns,
            "sysctl",
            "-n",
            "net.ipv4.ip_forward",
        ])
        .output()
        .expect("sysctl");
    assert_eq!(String::from_utf8_lossy(&fwd.stdout).trim(), "1");
    // Seven namespaces: two bridges, the router, four hosts.
    assert_eq!(
        namespaces_with_prefix(&prefix).len(),
        7,
        "{:?}",
        tb.namespaces()
    );

    // Unicast crosses the router: a listener on a subnet-0 host, reached
    // from subnet 1.
    let (h0, h3) = (tb.hosts[0].clone(), tb.hosts[3].clone());
    let listener_rt = NsRuntime::new(&h0).expect("runtime");
    let addr = std::net::SocketAddr::from((h0.ip, 7499));
    let listener = listener_rt.run(Duration::from_secs(5), async move {
        tokio::net::TcpListener::bind(addr).await.expect("bind")
    });
    assert!(tcp_reaches(&h3, addr), "198.18.1.2 cannot reach {addr}");
    // And within a subnet, as before.
    assert!(
        tcp_reaches(&tb.hosts[1], addr),
        "198.18.0.2 cannot reach {addr}"
    );
    drop(listener);
    drop(listener_rt);
    drop(tb);
    assert_eq!(namespaces_with_prefix(&prefix), Vec::<String>::new());

    // A bad rate fails at the first host's `tc`, after the bridges, the
    // router and that host's namespace exist: all of it is removed.
    let b = Testbed::builder()
        .subnets(SUBNETS)
        .hosts_per_subnet(PER_SUBNET)
        .rate("no-such-rate");
    let prefix = format!("{}-", b.prefix());
    let err = b.build().expect_err("a bad rate");
    assert!(err.contains("tc"), "{err}");
    assert_eq!(namespaces_with_prefix(&prefix), Vec::<String>::new());
}

/// mDNS only, no controller: every agent finds its own subnet's agent and,
/// though unicast crosses the router, never one on the other subnet.
#[test]
fn mdns_stays_inside_each_subnet() {
    /// How long past same-subnet discovery an agent of the other subnet
    /// must stay unknown (mDNS found same-subnet peers within a few s).
    const QUIET: Duration = Duration::from_secs(10);
    if skip("mdns_stays_inside_each_subnet") {
        return;
    }
    let tb = two_subnets();
    let pki = Pki::new();
    let work = tempfile::tempdir().expect("tempdir");
    let agents = start_on_testbed(&pki, &tb, work.path());
    let started = Instant::now();
    wait_for_peers(
        &agents,
        PER_SUBNET - 1,
        Some("mdns"),
        Duration::from_secs(60),
    );
    eprintln!(
        "mDNS: every agent saw its subnet's other agent after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // The other subnet's agents are reachable: only discovery separates
    // them.
    let seed = std::net::SocketAddr::from((tb.hosts[0].ip, agents[0].port));
    assert!(
        tcp_reaches(&tb.hosts[PER_SUBNET], seed),
        "subnet 1 cannot reach the seed at {seed}"
    );
    let deadline = Instant::now() + QUIET;
    loop {
        for (i, a) in agents.iter().enumerate() {
            let subnet = tb.hosts[i].subnet;
            let known = peer_ids(a, None);
            let same: Vec<String> = (0..agents.len())
                .filter(|&j| j != i && tb.hosts[j].subnet == subnet)
                .map(agent_id)
                .collect();
            assert!(
                known.iter().all(|id| same.contains(id)),
                "{} (subnet {subnet}) knows {known:?}, not only its subnet's {same:?}; log:\n{}",
                a.id,
                a.log()
            );
            assert!(
                same.iter().all(|id| known.contains(id)),
                "{} lost its subnet's peers: knows {known:?}",
                a.id
            );
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn online(ctl: &ControllerProcess) -> usize {
    let list = ctl.cli(&["agents", "list", "--json"]);
    if list.code != 0 {
        return 0;
    }
    list.json()
        .as_array()
        .map(|a| a.iter().filter(|x| x["online"] == true).count())
        .unwrap_or(0)
}

fn enrolled(
    ctl: &ControllerProcess,
    host: &Host,
    token: &str,
    fp: &str,
    id: &str,
    dir: &Path,
) -> TlsPaths {
    let (run, tls) = enroll_in(Some(&host.ns), &ctl.addr, token, fp, id, dir);
    assert_eq!(
        run.code, 0,
        "enrolling {id} from {}: {}{}",
        host.ip, run.stdout, run.stderr
    );
    tls
}

/// The controller on the router (listening on 198.18.0.254): agents of
/// both subnets enroll and keep sessions through it, their rosters list
/// the other subnet's agents, and subnet 1 fetches what subnet 0 published.
#[test]
fn roster_carries_a_package_across_subnets() {
    const PKG: &str = "lab/subnets@1";
    const SIZE: u64 = 8 << 20;
    const LIMIT: Duration = Duration::from_secs(120);
    if skip("roster_carries_a_package_across_subnets") {
        return;
    }
    let tb = two_subnets();
    let work = tempfile::tempdir().expect("tempdir");
    let ctl = ControllerProcess::start_on(
        &work.path().join("controller"),
        &tb.router_host(0).expect("a router"),
    );
    let fp = ctl.fingerprint();
    let token = ctl.token(&["lab"], "1h", tb.hosts.len() as u32);
    let pki = Pki::new();
    let agents: Vec<AgentProcess> = tb
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let id = agent_id(i);
            let tls = enrolled(
                &ctl,
                h,
                &token,
                &fp,
                &id,
                &work.path().join(format!("{id}-id")),
            );
            start_agent_in(
                &pki,
                &ctl,
                &id,
                &work.path().join(&id),
                tls,
                AgentOptions::on(h),
            )
        })
        .collect();
    let started = Instant::now();
    wait_until("all agents online", Duration::from_secs(60), || {
        online(&ctl) == agents.len()
    });

    // Subnet 1 knows subnet 0's agents from the roster alone.
    let subnet0: Vec<String> = (0..agents.len())
        .filter(|&i| tb.hosts[i].subnet == 0)
        .map(agent_id)
        .collect();
    for (i, a) in agents.iter().enumerate() {
        if tb.hosts[i].subnet != 1 {
            continue;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let roster = peer_ids(a, Some("roster"));
            if subnet0.iter().all(|id| roster.contains(id)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}'s roster peers are {roster:?}, not {subnet0:?}; agent log:\n{}\ncontroller log:\n{}",
                a.id,
                a.log(),
                ctl.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    eprintln!(
        "roster: subnet 1 knew subnet 0's agents {:.1} s after start",
        started.elapsed().as_secs_f64()
    );

    let (content, manifest) = pki.write_package(
        work.path(),
        "lab/subnets",
        SIZE,
        ChunkingSpec::fixed(1 << 20).expect("valid"),
    );
    agents[0].publish(&manifest, &content);
    let fetching = Instant::now();
    let far: Vec<&AgentProcess> = agents
        .iter()
        .enumerate()
        .filter(|(i, _)| tb.hosts[*i].subnet == 1)
        .map(|(_, a)| a)
        .collect();
    for a in &far {
        let run = a.shoal(&["fetch", PKG]);
        assert_eq!(
            run.code,
            0,
            "{}: fetch: {}{}\nlog:\n{}",
            a.id,
            run.stdout,
            run.stderr,
            a.log()
        );
    }
    wait_complete(&far, PKG, SIZE, LIMIT);
    eprintln!(
        "{} agents in subnet 1 fetched {} MiB from subnet 0 in {:.1} s",
        far.len(),
        SIZE >> 20,
        fetching.elapsed().as_secs_f64()
    );
    let expected = tree_hashes(&content);
    for a in &far {
        assert_eq!(
            tree_hashes(&a.dir.join("data/packages/lab_subnets@1")),
            expected,
            "{} differs",
            a.id
        );
    }
    // Only the seed held it in subnet 0: at least one copy crossed the
    // router from it.
    let sent = agents[0].status_u64("bytes_sent");
    assert!(sent >= SIZE, "the seed sent only {sent} bytes");
}

//! `bench-swarm`: distribute one package from a seed to N agents on a
//! network-namespace LAN with every link capped, and report the makespan
//! against the ideal `size / link rate`, the seed's upload in copies, and
//! each agent's peak memory. `bench-swarm pair` measures one transfer on
//! loopback without limits: throughput and CPU per GB.
//!
//! Run: `cargo run --release -p shoal-tests --bin bench-swarm -- --help`
//! (as root, for the namespaces).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use shoal_proto::chunking::ChunkingSpec;
use shoal_proto::units::{parse_rate, parse_size};
use shoal_tests::netns::{Testbed, unavailable};
use shoal_tests::process::{AgentProcess, start_on_testbed, wait_for_peers};
use shoal_tests::swarm::Pki;

/// TCP payload gets about this share of a tbf rate on this kind of machine
/// (PRODUCT.md); the ideal makespan uses the rate TCP can reach.
const TCP_SHARE: f64 = 0.957;

#[derive(Debug, Parser)]
#[command(
    name = "bench-swarm",
    about = "Shoal swarm benchmark on a namespace LAN"
)]
struct Args {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// Agents besides the seed.
    #[arg(long, default_value_t = 10)]
    agents: usize,
    #[arg(long, default_value = "512MiB", value_parser = size)]
    size: u64,
    /// Link rate of every host, both ways (tc tbf syntax and ours alike).
    #[arg(long, default_value = "100Mbit/s")]
    rate: String,
    /// Chunk size (fixed chunking).
    #[arg(long, default_value = "4MiB", value_parser = size)]
    chunk_size: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 1800)]
    timeout: u64,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Two agents on loopback, no limits: throughput and CPU per GB.
    Pair {
        #[arg(long, default_value = "2GiB", value_parser = size)]
        size: u64,
    },
}

fn size(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

/// VmHWM of a process, bytes.
fn peak_rss(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// User + system CPU seconds of a process.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn done_bytes(a: &AgentProcess, package: &str) -> (u64, bool) {
    let run = a.shoal(&["list", "--json"]);
    if run.code != 0 {
        return (0, false);
    }
    let v = run.json();
    let Some(p) = v.as_array().and_then(|l| {
        l.iter().find(|p| {
            format!(
                "{}@{}",
                p["name"].as_str().unwrap_or(""),
                p["version"].as_str().unwrap_or("")
            ) == package
        })
    }) else {
        return (0, false);
    };
    (
        p["bytes_done"].as_u64().unwrap_or(0),
        p["state"] == "complete",
    )
}

fn write_package(pki: &Pki, dir: &Path, name: &str, size: u64, chunk: u64) -> (PathBuf, PathBuf) {
    eprintln!("writing {} MiB of content …", size >> 20);
    let spec = ChunkingSpec::fixed(u32::try_from(chunk).expect("chunk size")).expect("chunk size");
    pki.write_package(dir, name, size, spec)
}

fn main() {
    let args = Args::parse();
    if let Some(Mode::Pair { size }) = args.mode {
        return pair(size);
    }
    if let Some(why) = unavailable() {
        eprintln!("bench-swarm: {why}");
        std::process::exit(77);
    }
    let rate_bytes = parse_rate(&args.rate).expect("--rate");
    let tc_rate = format!("{}bit", rate_bytes * 8);
    let pki = Pki::new();
    let work = tempfile::tempdir().expect("tempdir");
    let (content, manifest) =
        write_package(&pki, work.path(), "bench/image", args.size, args.chunk_size);
    let tb = Testbed::new(args.agents + 1, Some(&tc_rate)).expect("testbed");
    let hosts = start_on_testbed(&pki, &tb, work.path());
    hosts[0].publish(&manifest, &content);
    wait_for_peers(&hosts, args.agents, None, Duration::from_secs(60));

    eprintln!("distributing to {} agents …", args.agents);
    let started = Instant::now();
    std::thread::scope(|s| {
        for h in &hosts[1..] {
            s.spawn(move || {
                let run = h.shoal(&["fetch", "bench/image@1"]);
                assert_eq!(run.code, 0, "{}: {}", h.id, run.stderr);
            });
        }
    });
    let mut done_at: Vec<Option<f64>> = vec![None; args.agents];
    let mut timeline: Vec<(f64, Vec<u64>)> = Vec::new();
    let mut rss = vec![0u64; args.agents];
    let limit = Duration::from_secs(args.timeout);
    while done_at.iter().any(Option::is_none) {
        assert!(started.elapsed() < limit, "not done after {limit:?}");
        let t = started.elapsed().as_secs_f64();
        let mut row = Vec::new();
        for (i, h) in hosts[1..].iter().enumerate() {
            let (bytes, complete) = done_bytes(h, "bench/image@1");
            row.push(bytes);
            if complete && done_at[i].is_none() {
                done_at[i] = Some(t);
            }
            if let Some(r) = h.pid().and_then(peak_rss) {
                rss[i] = rss[i].max(r);
            }
        }
        timeline.push((t, row));
        std::thread::sleep(Duration::from_millis(250));
    }
    let makespan = done_at.iter().flatten().fold(0.0f64, |a, &b| a.max(b));
    let ideal = args.size as f64 / (rate_bytes as f64 * TCP_SHARE);
    let seed_sent = hosts[0].shoal(&["status", "--json"]).json()["bytes_sent"]
        .as_u64()
        .unwrap_or(0);
    let copies = seed_sent as f64 / args.size as f64;
    let max_rss = rss.iter().copied().max().unwrap_or(0);

    println!(
        "\nShoal swarm: {} agents, {} MiB, {} links, {} MiB chunks",
        args.agents,
        args.size >> 20,
        args.rate,
        args.chunk_size >> 20
    );
    println!("  makespan         {makespan:8.1} s");
    println!(
        "  ideal            {ideal:8.1} s  (size / ({} x {TCP_SHARE}))",
        args.rate
    );
    println!("  makespan / ideal {:8.2}", makespan / ideal);
    println!("  seed upload      {copies:8.2} copies");
    println!(
        "  agent peak RSS   {:8.1} MiB (max over agents)",
        max_rss as f64 / (1 << 20) as f64
    );
    let mut sorted: Vec<f64> = done_at.iter().flatten().copied().collect();
    sorted.sort_by(f64::total_cmp);
    println!(
        "  completions (s)  {}",
        sorted
            .iter()
            .map(|t| format!("{t:.1}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    if let Some(path) = args.json {
        let v = serde_json::json!({
            "agents": args.agents, "size": args.size, "rate": args.rate, "chunk_size": args.chunk_size,
            "makespan_s": makespan, "ideal_s": ideal, "ratio": makespan / ideal,
            "seed_upload_copies": copies, "agent_peak_rss_bytes": rss, "completion_s": done_at,
            "timeline": timeline.iter().map(|(t, r)| serde_json::json!({"t": t, "bytes": r})).collect::<Vec<_>>(),
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&v).expect("json")).expect("write json");
    }
    drop(hosts);
    drop(tb);
}

/// One seed, one agent, loopback, no limits.
fn pair(size: u64) {
    let pki = Pki::new();
    let work = tempfile::tempdir().expect("tempdir");
    let (content, manifest) = write_package(&pki, work.path(), "bench/pair", size, 4 << 20);
    let seed = AgentProcess::start(&pki, "seed", &work.path().join("seed"), &[], "");
    seed.publish(&manifest, &content);
    let agent = AgentProcess::start(
        &pki,
        "agent",
        &work.path().join("agent"),
        &[seed.addr()],
        "",
    );
    let (seed_pid, agent_pid) = (seed.pid().expect("pid"), agent.pid().expect("pid"));
    let cpu0 = cpu_seconds(seed_pid).unwrap_or(0.0) + cpu_seconds(agent_pid).unwrap_or(0.0);
    let started = Instant::now();
    let run = agent.shoal(&["fetch", "bench/pair@1", "--wait", "--json", "-q"]);
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(run.code, 0, "fetch: {}{}", run.stdout, run.stderr);
    let seed_cpu = cpu_seconds(seed_pid).unwrap_or(0.0);
    let agent_cpu = cpu_seconds(agent_pid).unwrap_or(0.0);
    let gb = size as f64 / 1e9;
    println!("\nShoal pair on loopback, no limits, {} MiB", size >> 20);
    println!("  throughput      {:8.0} MB/s", size as f64 / secs / 1e6);
    println!(
        "  CPU per GB      {:8.2} s (sender + receiver; receiver {:.2} s, sender {:.2} s)",
        (seed_cpu + agent_cpu - cpu0) / gb,
        agent_cpu / gb,
        seed_cpu / gb
    );
    println!(
        "  agent peak RSS  {:8.1} MiB",
        peak_rss(agent_pid).unwrap_or(0) as f64 / (1 << 20) as f64
    );
}

//! `bench-sim`: the swarm scheduler at fleet scale, by simulation (see
//! `shoal_tests::sim`): makespan against `size / link rate` for each
//! fleet size, with the agent's own chunk and peer selection code.
//!
//! Run: `cargo run --release -p shoal-tests --bin bench-sim -- --hosts 30,1000,5000`

use clap::Parser;
use shoal_proto::units::{parse_rate, parse_size};
use shoal_tests::sim::{SimConfig, run};

#[derive(Debug, Parser)]
#[command(about = "Simulate one package reaching N hosts from one seed")]
struct Args {
    /// Fleet sizes to simulate, comma-separated.
    #[arg(long, default_value = "30,1000,5000", value_delimiter = ',')]
    hosts: Vec<usize>,
    #[arg(long, default_value = "1GiB", value_parser = size)]
    size: u64,
    #[arg(long, default_value = "4MiB", value_parser = size)]
    chunk: u64,
    /// Every host's link, each way.
    #[arg(long, default_value = "100Mbit/s", value_parser = rate)]
    rate: u64,
    /// Random peers each host knows besides the seed.
    #[arg(long, default_value_t = 40)]
    neighbours: usize,
    #[arg(long, default_value_t = 8)]
    upload_slots: usize,
    #[arg(long, default_value_t = 4)]
    requests_per_peer: usize,
    /// Requests in flight per download, across all peers.
    #[arg(long, default_value_t = shoal_agent::swarm::scheduling::MAX_INFLIGHT_REQUESTS)]
    max_requests: usize,
    /// From asking to the first byte, milliseconds (round trip plus the
    /// serving agent's turnaround).
    #[arg(long, default_value_t = 2.0)]
    latency_ms: f64,
    /// Time step, seconds.
    #[arg(long, default_value_t = 0.02)]
    dt: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the figures (and every host's completion time) as JSON.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn size(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

fn rate(s: &str) -> Result<u64, String> {
    match parse_rate(s) {
        Ok(0) => Err("the link rate must be finite".into()),
        Ok(r) => Ok(r),
        Err(e) => Err(e.to_string()),
    }
}

fn main() {
    let a = Args::parse();
    let chunk = u32::try_from(a.chunk).expect("--chunk fits in 32 bits");
    println!(
        "{:>6} {:>10} {:>9} {:>7} {:>11} {:>9} {:>8}",
        "hosts", "makespan", "ideal", "ratio", "seed copies", "p50 done", "wall"
    );
    let mut out = Vec::new();
    for &hosts in &a.hosts {
        let cfg = SimConfig {
            hosts,
            size: a.size,
            chunk,
            link: a.rate as f64,
            neighbours: a.neighbours,
            upload_slots: a.upload_slots,
            requests_per_peer: a.requests_per_peer,
            max_requests: a.max_requests,
            latency: a.latency_ms / 1e3,
            dt: a.dt,
            max_time: 100.0 * a.size as f64 / a.rate as f64,
            seed: a.seed,
        };
        let started = std::time::Instant::now();
        let r = run(&cfg);
        let wall = started.elapsed().as_secs_f64();
        let mut done = r.completed.clone();
        done.sort_by(f64::total_cmp);
        let p50 = done.get(done.len() / 2).copied().unwrap_or(f64::NAN);
        println!(
            "{hosts:>6} {:>9.1}s {:>8.1}s {:>7.3} {:>11.2} {:>8.1}s {:>7.1}s{}",
            r.makespan,
            r.ideal,
            r.ratio(),
            r.seed_copies,
            p50,
            wall,
            if r.unfinished > 0 {
                format!("  ({} unfinished)", r.unfinished)
            } else {
                String::new()
            }
        );
        out.push(serde_json::json!({
            "hosts": hosts, "size": a.size, "chunk": a.chunk, "link_bytes_per_s": a.rate,
            "neighbours": a.neighbours, "dt": a.dt, "makespan_s": r.makespan, "ideal_s": r.ideal,
            "ratio": r.ratio(), "seed_copies": r.seed_copies, "unfinished": r.unfinished,
            "completed_s": done, "wall_s": wall,
        }));
    }
    if let Some(path) = a.json {
        let doc = serde_json::to_string_pretty(&out).expect("JSON");
        std::fs::write(&path, doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

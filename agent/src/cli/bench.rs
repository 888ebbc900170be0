//! `shoal bench`: performance measurements on this machine.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Subcommand;
use serde_json::json;
use shoal_proto::PublisherKey;
use shoal_proto::package::{CreateOptions, create_manifest};
use shoal_proto::units::{Bytes, parse_size};

use super::exit::{self, CliError};
use super::output::Output;
use super::pkg::{Chunking, chunking_from};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Hashing throughput and peak memory of `pkg create` on a generated
    /// file, per chunking and thread count.
    Hash(HashArgs),
}

#[derive(Debug, clap::Args)]
pub struct HashArgs {
    /// Size of the generated input.
    #[arg(long, default_value = "2GiB", value_parser = |s: &str| parse_size(s).map_err(|e| e.to_string()))]
    pub size: u64,
    /// Thread counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2])]
    pub threads: Vec<usize>,
    /// Chunkings to measure.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Chunking::Fixed, Chunking::Cdc])]
    pub chunking: Vec<Chunking>,
    /// Directory for the generated input [default: the system temp dir].
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

pub fn run(cmd: BenchCommand, out: Output) -> Result<u8, CliError> {
    match cmd {
        BenchCommand::Hash(a) => hash(a, out),
    }
}

/// Writes `size` pseudo-random bytes (BLAKE3 XOF) through a 1 MiB buffer.
pub fn write_random_file(path: &Path, size: u64, seed: &[u8]) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut xof = blake3::Hasher::new().update(seed).finalize_xof();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        xof.fill(&mut buf[..n]);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    // Flush to disk now so write-back does not compete with what is measured.
    f.get_ref().sync_all()
}

/// Resets the kernel's peak-RSS mark for this process (Linux only).
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Peak resident set size of this process in bytes (Linux only).
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Measured runs per configuration; the median is reported.
const RUNS: usize = 3;

fn hash(a: HashArgs, out: Output) -> Result<u8, CliError> {
    let dir = tempfile::Builder::new()
        .prefix("shoal-bench-")
        .tempdir_in(a.dir.clone().unwrap_or_else(std::env::temp_dir))
        .map_err(|e| CliError::io(e, "creating the benchmark directory"))?;
    let input = dir.path().join("input.bin");
    if !out.json {
        eprintln!(
            "generating {} of input in {} …",
            Bytes(a.size),
            dir.path().display()
        );
    }
    write_random_file(&input, a.size, b"shoal bench hash")
        .map_err(|e| CliError::io(e, format!("writing {}", input.display())))?;
    let key = PublisherKey::generate()?;
    // Warm the page cache: every measured run then reads from memory.
    std::io::copy(
        &mut std::fs::File::open(&input).map_err(|e| CliError::io(e, input.display()))?,
        &mut std::io::sink(),
    )
    .map_err(|e| CliError::io(e, input.display()))?;
    let cores = shoal_proto::package::default_threads();
    let mut rows = Vec::new();
    if !out.json {
        println!(
            "{:<8} {:>7} {:>10} {:>10} {:>12} {:>10}  content id",
            "chunking", "threads", "seconds", "GB/s", "GB/s/thread", "peak RSS"
        );
    }
    for &kind in &a.chunking {
        let mut first_id = None;
        for &threads in &a.threads {
            let opts = CreateOptions {
                name: "bench".into(),
                version: "1".into(),
                chunking: chunking_from(kind, None, None)?,
                publisher: key.public(),
                threads: threads.max(1),
                created_unix_ms: Some(0),
                labels: Default::default(),
            };
            let reset = reset_peak_rss();
            let mut times = Vec::with_capacity(RUNS);
            let mut m = None;
            for _ in 0..RUNS {
                let started = Instant::now();
                m = Some(create_manifest(&input, &opts, &())?);
                times.push(started.elapsed().as_secs_f64());
            }
            let rss = peak_rss();
            let m = m.expect("RUNS > 0");
            times.sort_by(f64::total_cmp);
            let secs = times[RUNS / 2];
            let id = m.content_id()?;
            let same = *first_id.get_or_insert(id) == id;
            let gbps = a.size as f64 / secs / 1e9;
            if !out.json {
                println!(
                    "{:<8} {:>7} {:>10.2} {:>10.2} {:>12.2} {:>10}  {}{}",
                    format!("{kind:?}").to_lowercase(),
                    threads,
                    secs,
                    gbps,
                    gbps / threads as f64,
                    rss.map_or("n/a".into(), |r| Bytes(r).to_string()),
                    id.short(),
                    if same { "" } else { "  (DIFFERS!)" }
                );
            }
            rows.push(json!({
                "chunking": format!("{kind:?}").to_lowercase(),
                "threads": threads,
                "seconds": secs,
                "runs_seconds": times,
                "runs_seconds": times,
                "gb_per_s": gbps,
                "peak_rss_bytes": rss,
                "peak_rss_reset": reset,
                "chunks": m.chunks.len(),
                "content_id": id,
                "reproducible": same,
            }));
            if !same {
                return Err(CliError::new(
                    exit::SOFTWARE,
                    anyhow::anyhow!(
                        "content id changed with the thread count: chunking is not reproducible"
                    ),
                ));
            }
        }
    }
    if out.json {
        out.json(&json!({"input_bytes": a.size, "cores": cores, "results": rows}));
    } else {
        println!("input {} on {cores} cores; GB = 10^9 bytes", Bytes(a.size));
    }
    Ok(exit::OK)
}

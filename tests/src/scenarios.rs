//! The deployment scenarios `bench-swarm scenario` runs (issue 6 item 2),
//! each on a namespace testbed with Shoal's real agents:
//!
//! - `course`: a lecturer's directory of thousands of small files and a
//!   few large ones to a lab;
//! - `subnets`: two labs behind a router, mDNS inside each, the
//!   controller's roster across; the seed in the first;
//! - `churn`: a fifth of the hosts killed (SIGKILL) mid-run and restarted
//!   a few seconds later;
//! - `next-month`: every host holds last month's image; the seed
//!   publishes the next one, a few per cent changed, and every host
//!   fetches it.
//!
//! Content, the choice of hosts and times are drawn from a fixed seed, so
//! a run is repeatable. Everything a scenario starts (agents, controller,
//! namespaces, a tmpfs, files) is gone when it returns, also on errors,
//! panics and interrupts ([`crate::baselines::catch_interrupts`]).

use std::collections::HashSet;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal_proto::chunking::ChunkingSpec;
use shoal_proto::package::{CreateOptions, create_manifest};
use shoal_proto::{Manifest, SignedManifest};

use crate::baselines::{self, MethodResult, StorageKind, check_interrupted, link_bytes};
use crate::controller::{ControllerProcess, enroll_in, start_agent_in};
use crate::netns::{Host, NsRuntime, Testbed};
use crate::process::{AgentOptions, AgentProcess};
use crate::swarm::Pki;
use crate::swarm_run::{
    self, DISCOVERY_TIMEOUT, Distribution, Fetch, Outage, agent_id, distribute, ideal_seconds,
    limits_yaml, start_swarm,
};

// ---------------------------------------------------------------------------
// A repeatable random source

/// SplitMix64: small, fast, and the same numbers on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n) (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.unit() * n as f64) as u64).min(n.saturating_sub(1))
    }

    /// Log-uniform in [lo, hi]: as many draws per factor of two anywhere.
    pub fn log_uniform(&mut self, lo: u64, hi: u64) -> u64 {
        let (l, h) = (lo as f64, hi as f64);
        ((l * (h / l).powf(self.unit())).round() as u64).clamp(lo, hi)
    }

    /// Fisher–Yates.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i as u64 + 1) as usize);
        }
    }
}

// ---------------------------------------------------------------------------
// Course material

/// Smallest and largest course file.
pub const COURSE_MIN: u64 = 1 << 10;
pub const COURSE_MAX: u64 = 50 << 20;
/// Where "small" files (documents, code, slides) end and "large" ones
/// (recordings, data sets) begin.
pub const COURSE_SMALL_MAX: u64 = 1 << 20;
/// Files per directory of the course tree.
const FILES_PER_DIR: usize = 100;

fn log_uniform_mean(lo: u64, hi: u64) -> f64 {
    (hi - lo) as f64 / (hi as f64 / lo as f64).ln()
}

/// `files` sizes from [`COURSE_MIN`] to [`COURSE_MAX`] adding up to
/// exactly `total`: most log-uniform from 1 KiB to 1 MiB, a few
/// log-uniform from 1 to 50 MiB, as many of those as bring the expected
/// total to `total`, then all scaled to hit it; in a shuffled order.
/// 5,000 files, 1 GiB, seed 1: median 30 KiB, 3,042 files under 64 KiB,
/// 42 over 1 MiB (25 drawn large) holding 32 % of the bytes, largest
/// 45.8 MiB.
pub fn course_sizes(files: usize, total: u64, seed: u64) -> Result<Vec<u64>, String> {
    let n = files as u64;
    if files == 0 || total < n * COURSE_MIN || total > n * COURSE_MAX {
        return Err(format!(
            "{files} files cannot add up to {total} bytes with each from {COURSE_MIN} to \
             {COURSE_MAX} bytes"
        ));
    }
    let small = log_uniform_mean(COURSE_MIN, COURSE_SMALL_MAX);
    let large = log_uniform_mean(COURSE_SMALL_MAX, COURSE_MAX);
    let share = ((total as f64 / n as f64 - small) / (large - small)).clamp(0.0, 1.0);
    let large_files = (share * files as f64).round() as usize;
    let mut rng = Rng::new(seed);
    let mut sizes: Vec<u64> = (0..files)
        .map(|i| {
            if i < large_files {
                rng.log_uniform(COURSE_SMALL_MAX, COURSE_MAX)
            } else {
                rng.log_uniform(COURSE_MIN, COURSE_SMALL_MAX)
            }
        })
        .collect();
    rng.shuffle(&mut sizes);
    for _ in 0..50 {
        let sum: u64 = sizes.iter().sum();
        if sum == total {
            break;
        }
        let f = total as f64 / sum as f64;
        for s in &mut sizes {
            *s = ((*s as f64 * f).round() as u64).clamp(COURSE_MIN, COURSE_MAX);
        }
    }
    // What rounding and the bounds left over, a file at a time.
    let mut sum: u64 = sizes.iter().sum();
    for s in &mut sizes {
        if sum < total {
            let add = (total - sum).min(COURSE_MAX - *s);
            *s += add;
            sum += add;
        } else if sum > total {
            let cut = (sum - total).min(*s - COURSE_MIN);
            *s -= cut;
            sum -= cut;
        }
    }
    debug_assert_eq!(sizes.iter().sum::<u64>(), total);
    Ok(sizes)
}

/// The relative path of course file `i`: `week-DD/file-NNNN.bin`.
pub fn course_path(i: usize) -> PathBuf {
    PathBuf::from(format!("week-{:02}", i / FILES_PER_DIR + 1)).join(format!("file-{i:04}.bin"))
}

/// Writes the course tree under `root`, each file pseudo-random.
pub fn write_course(root: &Path, sizes: &[u64]) -> Result<(), String> {
    for (i, &size) in sizes.iter().enumerate() {
        let path = root.join(course_path(i));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        crate::write_random(&path, size, path.to_string_lossy().as_bytes());
        if i % 500 == 0 {
            check_interrupted()?;
        }
    }
    Ok(())
}

/// The sorted sizes' quantile `q`.
fn quantile(sorted: &[u64], q: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

// ---------------------------------------------------------------------------
// Next month's image

/// What an edit does to the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditKind {
    /// New bytes in place of as many old ones.
    Overwrite,
    /// New bytes before `offset`; everything after moves.
    Insert,
}

/// One change between this month's image and the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edit {
    /// In the old image.
    pub offset: u64,
    pub len: u64,
    pub kind: EditKind,
}

/// Edit lengths: log-uniform from 4 KiB to 1 MiB (a file, a few blocks
/// of a database, a rewritten directory).
pub const EDIT_MIN: u64 = 4 << 10;
pub const EDIT_MAX: u64 = 1 << 20;
/// Insertions, sharing a tenth of the changed bytes.
pub const INSERTIONS: usize = 4;

/// Edits changing `changed` (a share) of an image of `size` bytes: a
/// tenth of the bytes in [`INSERTIONS`] insertions, the rest overwritten
/// in place, in edits of [`EDIT_MIN`] to [`EDIT_MAX`]; one edit in each of
/// as many equal slots of the image, at a random place in it. Sorted by
/// offset, never overlapping.
pub fn edit_plan(size: u64, changed: f64, seed: u64) -> Result<Vec<Edit>, String> {
    if !(0.0..=1.0).contains(&changed) {
        return Err(format!("a changed share of {changed}: 0 to 1"));
    }
    let total = (size as f64 * changed).round() as u64;
    let mut rng = Rng::new(seed);
    let inserted = total / 10;
    let insertions = if inserted >= INSERTIONS as u64 * EDIT_MIN {
        INSERTIONS
    } else {
        usize::from(inserted > 0)
    };
    let mut edits: Vec<(u64, EditKind)> = Vec::new();
    if insertions > 0 {
        let weights: Vec<f64> = (0..insertions).map(|_| 1.0 + rng.unit()).collect();
        let sum: f64 = weights.iter().sum();
        let mut left = inserted;
        for (k, w) in weights.iter().enumerate() {
            let len = if k + 1 == insertions {
                left
            } else {
                ((inserted as f64 * w / sum) as u64).min(left)
            };
            left -= len;
            edits.push((len, EditKind::Insert));
        }
    }
    let mut left = total - inserted;
    while left > 0 {
        let len = rng.log_uniform(EDIT_MIN, EDIT_MAX).min(left);
        left -= len;
        edits.push((len, EditKind::Overwrite));
    }
    if edits.is_empty() {
        return Ok(Vec::new());
    }
    let slot = size / edits.len() as u64;
    if slot <= EDIT_MAX {
        return Err(format!(
            "{} edits do not fit in {size} bytes apart: change less or use a larger image",
            edits.len()
        ));
    }
    rng.shuffle(&mut edits);
    Ok(edits
        .into_iter()
        .enumerate()
        .map(|(j, (len, kind))| {
            let start = j as u64 * slot;
            let offset = match kind {
                EditKind::Overwrite => start + rng.below(slot - len + 1),
                EditKind::Insert => start + rng.below(slot),
            };
            Edit { offset, len, kind }
        })
        .collect())
}

/// Writes `dst`: `src` with `edits` applied (new bytes pseudo-random from
/// `seed`). Returns its size.
pub fn write_edited(src: &Path, dst: &Path, edits: &[Edit], seed: &[u8]) -> Result<u64, String> {
    let io = |p: &Path| {
        let p = p.to_owned();
        move |e: std::io::Error| format!("{}: {e}", p.display())
    };
    let mut r = BufReader::with_capacity(1 << 20, std::fs::File::open(src).map_err(io(src))?);
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(dst).map_err(io(dst))?);
    let mut xof = blake3::Hasher::new().update(seed).finalize_xof();
    let mut buf = vec![0u8; 1 << 20];
    let mut fresh = |w: &mut BufWriter<std::fs::File>, mut len: u64| -> std::io::Result<()> {
        while len > 0 {
            let n = len.min(buf.len() as u64) as usize;
            xof.fill(&mut buf[..n]);
            w.write_all(&buf[..n])?;
            len -= n as u64;
        }
        Ok(())
    };
    let copy =
        |r: &mut BufReader<std::fs::File>, w: &mut dyn Write, len: u64| -> std::io::Result<()> {
            let n = std::io::copy(&mut r.by_ref().take(len), w)?;
            if n == len {
                Ok(())
            } else {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            }
        };
    let mut pos = 0u64;
    for e in edits {
        copy(&mut r, &mut w, e.offset - pos).map_err(io(src))?;
        pos = e.offset;
        fresh(&mut w, e.len).map_err(io(dst))?;
        if e.kind == EditKind::Overwrite {
            copy(&mut r, &mut std::io::sink(), e.len).map_err(io(src))?;
            pos += e.len;
        }
    }
    std::io::copy(&mut r, &mut w).map_err(io(src))?;
    w.flush().map_err(io(dst))?;
    let f = w
        .into_inner()
        .map_err(|e| format!("{}: {e}", dst.display()))?;
    f.sync_all().map_err(io(dst))?;
    f.metadata().map(|m| m.len()).map_err(io(dst))
}

/// Chunks (and their bytes) of `new` that `old` does not hold under the
/// same hash and length: what any host holding `old` must fetch.
pub fn new_chunks(old: &Manifest, new: &Manifest) -> (usize, u64) {
    let held: HashSet<([u8; 32], u32)> = old
        .chunks
        .iter()
        .map(|c| (*c.hash.as_bytes(), c.length))
        .collect();
    new.chunks
        .iter()
        .filter(|c| !held.contains(&(*c.hash.as_bytes(), c.length)))
        .fold((0, 0), |(n, b), c| (n + 1, b + u64::from(c.length)))
}

// ---------------------------------------------------------------------------
// Churn

/// Outages for `share` of `receivers` hosts (1..=receivers; at least one
/// when `share` > 0), each killed at a random time between 20 % and 60 %
/// of `ideal_s` and restarted 2 to 5 s later.
pub fn churn_plan(receivers: usize, share: f64, ideal_s: f64, seed: u64) -> Vec<Outage> {
    if share <= 0.0 || receivers == 0 {
        return Vec::new();
    }
    let k = ((receivers as f64 * share).round() as usize).clamp(1, receivers);
    let mut rng = Rng::new(seed);
    let mut hosts: Vec<usize> = (1..=receivers).collect();
    rng.shuffle(&mut hosts);
    let mut plan: Vec<Outage> = hosts[..k]
        .iter()
        .map(|&host| Outage {
            host,
            at_s: ideal_s * (0.2 + 0.4 * rng.unit()),
            down_s: 2.0 + 3.0 * rng.unit(),
        })
        .collect();
    plan.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    plan
}

// ---------------------------------------------------------------------------
// Running a scenario

/// Which scenario, with its own knobs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scenario {
    /// `files` files adding up to the size.
    Course {
        files: usize,
    },
    Subnets,
    /// `kill_share` of the hosts killed and restarted.
    Churn {
        kill_share: f64,
    },
    /// `changed` share of the image's bytes changed.
    NextMonth {
        changed: f64,
    },
}

impl Scenario {
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Course { .. } => "course",
            Scenario::Subnets => "subnets",
            Scenario::Churn { .. } => "churn",
            Scenario::NextMonth { .. } => "next-month",
        }
    }
}

/// What every scenario takes.
#[derive(Debug, Clone)]
pub struct Config {
    /// Receiving hosts (the seed is one more).
    pub agents: usize,
    /// Bytes of the package (next-month: of this month's image).
    pub size: u64,
    /// Every host's link rate, both ways, bytes per second.
    pub rate_bytes: u64,
    pub chunking: ChunkingSpec,
    /// Limit of each distribution.
    pub timeout: Duration,
    pub storage: StorageKind,
    pub upload_slots: u32,
    /// Seed of every random choice.
    pub seed: u64,
    /// Where to copy the agents' and the controller's logs at the end.
    pub logs: Option<PathBuf>,
}

/// Copies every `*.log` one level under `from` (`<from>/<id>/agent.log`)
/// to `to/<id>.log` when dropped: at the end of a run, failed or not.
#[derive(Debug)]
struct KeepLogs {
    from: Vec<PathBuf>,
    to: Option<PathBuf>,
}

impl Drop for KeepLogs {
    fn drop(&mut self) {
        let Some(to) = &self.to else {
            return;
        };
        if let Err(e) = std::fs::create_dir_all(to) {
            eprintln!("bench-swarm: {}: {e}", to.display());
            return;
        }
        for from in &self.from {
            let Ok(dirs) = std::fs::read_dir(from) else {
                continue;
            };
            for d in dirs.flatten() {
                let Ok(files) = std::fs::read_dir(d.path()) else {
                    continue;
                };
                for f in files.flatten() {
                    let p = f.path();
                    if p.extension().is_some_and(|e| e == "log") {
                        let name = format!("{}.log", d.file_name().to_string_lossy());
                        if let Err(e) = std::fs::copy(&p, to.join(&name)) {
                            eprintln!("bench-swarm: copying {}: {e}", p.display());
                        }
                    }
                }
            }
        }
        eprintln!("logs in {}", to.display());
    }
}

/// How to show bytes uploaded per host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadUnit {
    /// In copies of the package.
    Copies,
    /// In per cent of the package.
    Percent,
}

/// What a scenario measured.
#[derive(Debug)]
pub struct Outcome {
    pub scenario: &'static str,
    /// Receiving hosts.
    pub hosts: usize,
    /// Bytes of the package the timed part distributed.
    pub size: u64,
    pub ideal_s: f64,
    /// What the ideal is the time of.
    pub ideal_is: String,
    /// The timed part.
    pub result: MethodResult,
    /// Per host, seed first, for the charts.
    pub labels: Vec<String>,
    pub upload_unit: UploadUnit,
    /// Lines for the report, after the table.
    pub notes: Vec<String>,
    /// Scenario-specific figures for the JSON.
    pub extra: serde_json::Value,
}

/// A package of `content` as `name@version`, signed by the test
/// publisher; the manifest is written to `out`.
pub fn make_package(
    pki: &Pki,
    content: &Path,
    out: &Path,
    name: &str,
    version: &str,
    chunking: ChunkingSpec,
) -> Result<Manifest, String> {
    let opts = CreateOptions {
        name: name.into(),
        version: version.into(),
        chunking,
        publisher: pki.publisher.public(),
        threads: 2,
        created_unix_ms: Some(0),
        labels: Default::default(),
    };
    let m = create_manifest(content, &opts, &()).map_err(|e| format!("packaging {name}: {e}"))?;
    let signed =
        SignedManifest::sign(&m, &pki.publisher).map_err(|e| format!("signing {name}: {e}"))?;
    std::fs::write(out, signed.encode()).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(m)
}

/// The data directory of a run, on the disk or a tmpfs, checked for
/// room for `copies` copies of `size` bytes plus the agents' own files.
fn storage(work: &Path, c: &Config, copies: u64, size: u64) -> Result<baselines::Storage, String> {
    let hosts = c.agents as u64 + 1;
    let need = size * copies + (256 << 20) + (32 << 20) * hosts;
    baselines::prepare_storage(
        c.storage,
        &work.join("data"),
        need,
        &format!("{copies} copies of {} MiB plus slack", size >> 20),
        "a smaller --size or fewer --agents",
    )
}

/// Keeps the agents' (`<data>/agents/<id>/`) and the controller's logs
/// when `--logs` asks; drop it before `data`.
fn keep_logs(data: &baselines::Storage, c: &Config) -> KeepLogs {
    KeepLogs {
        from: vec![data.path().join("agents"), data.path().to_owned()],
        to: c.logs.clone(),
    }
}

fn tc_rate(c: &Config) -> String {
    format!("{}bit", c.rate_bytes * 8)
}

fn labels(hosts: usize, mark: impl Fn(usize) -> String) -> Vec<String> {
    std::iter::once("seed".to_owned())
        .chain((1..hosts).map(|i| format!("h{i}{}", mark(i))))
        .collect()
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

/// Runs `s`; everything it started is gone when it returns.
pub fn run(s: Scenario, c: &Config) -> Result<Outcome, String> {
    if c.agents == 0 || c.agents > 250 {
        return Err("--agents: 1 to 250".into());
    }
    if c.rate_bytes == 0 {
        return Err("--rate: the benchmark needs a limited rate".into());
    }
    match s {
        Scenario::Churn { kill_share } if !(0.0..=1.0).contains(&kill_share) => {
            return Err(format!("--kill-share {kill_share}: 0 to 1"));
        }
        Scenario::NextMonth { changed } if !(changed > 0.0 && changed <= 0.1) => {
            return Err(format!("--changed {changed}: more than 0, at most 0.1"));
        }
        _ => {}
    }
    let work = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
    match s {
        Scenario::Course { files } => course(work.path(), c, files),
        Scenario::Subnets => subnets(work.path(), c),
        Scenario::Churn { kill_share } => churn(work.path(), c, kill_share),
        Scenario::NextMonth { changed } => next_month(work.path(), c, changed),
    }
}

/// One image of `c.size` pseudo-random bytes as `name@1`, in
/// `dir/content`, the manifest in `dir/package.manifest`.
fn image_package(
    pki: &Pki,
    dir: &Path,
    name: &str,
    c: &Config,
) -> Result<(PathBuf, PathBuf, Manifest), String> {
    let content = dir.join("content");
    std::fs::create_dir_all(&content).map_err(|e| format!("{}: {e}", content.display()))?;
    eprintln!("writing {} MiB of content …", c.size >> 20);
    crate::write_random(&content.join("image.bin"), c.size, name.as_bytes());
    let manifest = dir.join("package.manifest");
    let m = make_package(pki, &content, &manifest, name, "1", c.chunking)?;
    Ok((content, manifest, m))
}

fn course(work: &Path, c: &Config, files: usize) -> Result<Outcome, String> {
    let sizes = course_sizes(files, c.size, c.seed)?;
    let data = storage(work, c, c.agents as u64 + 1, c.size)?;
    let _logs = keep_logs(&data, c);
    let dir = data.path().join("course");
    let content = dir.join("content");
    eprintln!("writing {files} files, {} MiB in all …", c.size >> 20);
    write_course(&content, &sizes)?;
    data.settle();
    let pki = Pki::new();
    let manifest = dir.join("package.manifest");
    let name = "lab/cs101-week3";
    let m = make_package(&pki, &content, &manifest, name, "1", c.chunking)?;
    check_interrupted()?;
    let tb = Testbed::new(c.agents + 1, Some(&tc_rate(c)))?;
    let mut agents = start_swarm(
        &pki,
        &tb,
        &data.path().join("agents"),
        &limits_yaml(c.upload_slots),
        &manifest,
        &content,
    )?;
    eprintln!("course: distributing to {} hosts …", c.agents);
    let d = distribute(
        &mut agents,
        &tb,
        &Fetch {
            package: &format!("{name}@1"),
            timeout: c.timeout,
            outages: &[],
        },
    )?;
    drop(agents);

    let mut sorted = sizes.clone();
    sorted.sort_unstable();
    let small = sorted.iter().filter(|&&s| s < 64 << 10).count();
    let large: Vec<u64> = sorted
        .iter()
        .copied()
        .filter(|&s| s > COURSE_SMALL_MAX)
        .collect();
    let large_bytes: u64 = large.iter().sum();
    let notes = vec![
        format!(
            "files: {files}; sizes min {:.1} KiB, median {:.1} KiB, 90th percentile {:.1} KiB, \
             max {:.1} MiB; {small} under 64 KiB; {} over 1 MiB holding {:.0} % of the bytes",
            sorted[0] as f64 / 1024.0,
            quantile(&sorted, 0.5) as f64 / 1024.0,
            quantile(&sorted, 0.9) as f64 / 1024.0,
            mib(sorted[sorted.len() - 1]),
            large.len(),
            100.0 * large_bytes as f64 / c.size as f64
        ),
        format!(
            "manifest: {} entries (files and directories), {} chunks",
            m.files.len(),
            m.chunks.len()
        ),
    ];
    Ok(Outcome {
        scenario: "course",
        hosts: c.agents,
        size: c.size,
        ideal_s: ideal_seconds(c.size, c.rate_bytes),
        ideal_is: "size / (rate x TCP share)".into(),
        result: d.method_result("shoal", c.size),
        labels: labels(c.agents + 1, |_| String::new()),
        upload_unit: UploadUnit::Copies,
        notes,
        extra: serde_json::json!({
            "files": files,
            "file_sizes": sizes,
            "manifest_entries": m.files.len(),
            "chunks": m.chunks.len(),
        }),
    })
}

/// Sums of `tx` per interface of the router namespace.
fn router_tx(ns: &str) -> Result<Vec<(String, u64)>, String> {
    Ok(link_bytes(ns, None)?
        .into_iter()
        .map(|l| (l.name, l.tx))
        .collect())
}

fn subnets(work: &Path, c: &Config) -> Result<Outcome, String> {
    let data = storage(work, c, c.agents as u64 + 1, c.size)?;
    let _logs = keep_logs(&data, c);
    let pki = Pki::new();
    let (content, manifest, _) = image_package(&pki, &data.path().join("image"), "bench/image", c)?;
    data.settle();
    check_interrupted()?;
    // Subnet 0: the seed and half the hosts; subnet 1: the rest.
    let sizes = [1 + c.agents / 2, c.agents - c.agents / 2];
    let tb = Testbed::builder()
        .subnet_sizes(&sizes)
        .rate(&tc_rate(c))
        .build()?;
    let router = tb.router_host(0).ok_or("the testbed has no router")?;
    let ctl = ControllerProcess::start_on(&data.path().join("controller"), &router);
    let fp = ctl.fingerprint();
    let token = ctl.token(&["lab"], "1h", tb.hosts.len() as u32);
    let agent_dir = data.path().join("agents");
    let extra = limits_yaml(c.upload_slots);
    eprintln!("subnets: enrolling {} agents …", tb.hosts.len());
    let mut agents: Vec<AgentProcess> = Vec::new();
    for (i, h) in tb.hosts.iter().enumerate() {
        check_interrupted()?;
        let id = agent_id(i);
        let (run, tls) = enroll_in(
            Some(&h.ns),
            &ctl.addr,
            &token,
            &fp,
            &id,
            &agent_dir.join(format!("{id}-identity")),
        );
        if run.code != 0 {
            return Err(format!(
                "enrolling {id} from {}: {}{}",
                h.ip, run.stdout, run.stderr
            ));
        }
        agents.push(start_agent_in(
            &pki,
            &ctl,
            &id,
            &agent_dir.join(&id),
            tls,
            AgentOptions {
                extra: extra.clone(),
                ..AgentOptions::on(h)
            },
        ));
    }
    agents[0].publish(&manifest, &content);
    // Every agent knows every other: its subnet's by mDNS, the other's
    // from the roster.
    swarm_run::wait_for_swarm(&agents, agents.len() - 1, DISCOVERY_TIMEOUT)?;
    eprintln!("subnets: distributing to {} hosts …", c.agents);
    let before = router_tx(&router.ns)?;
    let d = distribute(
        &mut agents,
        &tb,
        &Fetch {
            package: "bench/image@1",
            timeout: c.timeout,
            outages: &[],
        },
    )?;
    let after = router_tx(&router.ns)?;
    drop(agents);
    drop(ctl);

    let crossed: Vec<(String, u64)> = after
        .iter()
        .map(|(name, tx)| {
            let tx0 = before
                .iter()
                .find(|(n, _)| n == name)
                .map_or(0, |(_, t)| *t);
            (name.clone(), tx.saturating_sub(tx0))
        })
        .collect();
    let subnet_of: Vec<usize> = tb.hosts.iter().map(|h| h.subnet).collect();
    let makespan_in = |s: usize| {
        d.completion_s
            .iter()
            .enumerate()
            .filter(|(i, _)| subnet_of[i + 1] == s)
            .map(|(_, t)| *t)
            .fold(0.0, f64::max)
    };
    let mut notes = vec![format!(
        "subnet 0: the seed and {} hosts, done at {:.1} s; subnet 1: {} hosts, done at {:.1} s",
        sizes[0] - 1,
        makespan_in(0),
        sizes[1],
        makespan_in(1)
    )];
    for (name, tx) in &crossed {
        let s: usize = name.trim_start_matches("eth").parse().unwrap_or(usize::MAX);
        notes.push(format!(
            "router {name} (into subnet {s}) sent {:.1} MiB = {:.2} copies (frames; the \
             controller's own traffic included)",
            mib(*tx),
            *tx as f64 / c.size as f64
        ));
    }
    Ok(Outcome {
        scenario: "subnets",
        hosts: c.agents,
        size: c.size,
        ideal_s: ideal_seconds(c.size, c.rate_bytes),
        ideal_is: "size / (rate x TCP share)".into(),
        result: d.method_result("shoal", c.size),
        labels: labels(c.agents + 1, |i| format!(" s{}", subnet_of[i])),
        upload_unit: UploadUnit::Copies,
        notes,
        extra: serde_json::json!({
            "subnet_sizes": sizes,
            "host_subnets": subnet_of,
            "router_tx_bytes": crossed.iter()
                .map(|(n, b)| serde_json::json!({"interface": n, "bytes": b}))
                .collect::<Vec<_>>(),
            "subnet_makespan_s": [makespan_in(0), makespan_in(1)],
        }),
    })
}

fn churn(work: &Path, c: &Config, kill_share: f64) -> Result<Outcome, String> {
    let ideal_s = ideal_seconds(c.size, c.rate_bytes);
    let plan = churn_plan(c.agents, kill_share, ideal_s, c.seed);
    let data = storage(work, c, c.agents as u64 + 1, c.size)?;
    let _logs = keep_logs(&data, c);
    let pki = Pki::new();
    let (content, manifest, _) = image_package(&pki, &data.path().join("image"), "bench/image", c)?;
    data.settle();
    check_interrupted()?;
    let tb = Testbed::new(c.agents + 1, Some(&tc_rate(c)))?;
    let mut agents = start_swarm(
        &pki,
        &tb,
        &data.path().join("agents"),
        &limits_yaml(c.upload_slots),
        &manifest,
        &content,
    )?;
    eprintln!(
        "churn: distributing to {} hosts, killing {} of them …",
        c.agents,
        plan.len()
    );
    let d = distribute(
        &mut agents,
        &tb,
        &Fetch {
            package: "bench/image@1",
            timeout: c.timeout,
            outages: &plan,
        },
    )?;
    drop(agents);
    Ok(churn_outcome(c, &plan, &d, ideal_s))
}

fn churn_outcome(c: &Config, plan: &[Outage], d: &Distribution, ideal_s: f64) -> Outcome {
    let killed: HashSet<usize> = plan.iter().map(|o| o.host).collect();
    let steady: Vec<u64> = (1..=c.agents)
        .filter(|i| !killed.contains(i))
        .map(|i| d.rx_bytes[i])
        .collect();
    let steady_rx = if steady.is_empty() {
        f64::NAN
    } else {
        steady.iter().sum::<u64>() as f64 / steady.len() as f64
    };
    let mut notes = vec![format!(
        "{} of {} hosts killed (SIGKILL) between 20 % and 60 % of the ideal time, restarted \
         2-5 s later; hosts never killed received {:.1} MiB on eth0 each on average (frames)",
        plan.len(),
        c.agents,
        mib(steady_rx as u64)
    )];
    let mut twice = Vec::new();
    for r in &d.outages {
        let received = d.received[r.host];
        let extra = received.saturating_sub(c.size);
        twice.push(extra);
        let down_s = plan
            .iter()
            .find(|o| o.host == r.host)
            .map_or(f64::NAN, |o| o.down_s);
        notes.push(format!(
            "  {}: killed at {:.1} s holding {:.1} MiB, restarted {:.1} s later, answering \
             at {:.1} s (after {:.1} s) holding {:.1} MiB, done at {:.1} s; received {:.1} MiB \
             (fetched twice {:.1} MiB = {:.1} %), eth0 rx {:.1} MiB ({:+.1} MiB against the \
             others){}",
            agent_id(r.host),
            r.killed_at_s,
            mib(r.held_before),
            down_s,
            r.back_at_s,
            r.back_at_s - r.killed_at_s - down_s,
            mib(r.held_after),
            d.completion_s[r.host - 1],
            mib(received),
            mib(extra),
            100.0 * extra as f64 / c.size as f64,
            mib(d.rx_bytes[r.host]),
            (d.rx_bytes[r.host] as f64 - steady_rx) / (1u64 << 20) as f64,
            if r.was_complete {
                " (it was complete when killed)"
            } else {
                ""
            }
        ));
    }
    notes.push(format!(
        "fetched twice, all restarted hosts: {:.1} MiB (received by the agents' count, \
         over all their lives, beyond one copy)",
        mib(twice.iter().sum())
    ));
    Outcome {
        scenario: "churn",
        hosts: c.agents,
        size: c.size,
        ideal_s,
        ideal_is: "size / (rate x TCP share)".into(),
        result: d.method_result("shoal", c.size),
        labels: labels(c.agents + 1, |i| {
            if killed.contains(&i) {
                " (killed)".into()
            } else {
                String::new()
            }
        }),
        upload_unit: UploadUnit::Copies,
        notes,
        extra: serde_json::json!({
            "kill_share": plan.len() as f64 / c.agents as f64,
            "plan": plan.iter()
                .map(|o| serde_json::json!({"host": o.host, "at_s": o.at_s, "down_s": o.down_s}))
                .collect::<Vec<_>>(),
            "fetched_twice_bytes": twice,
            "steady_host_rx_mean_bytes": steady_rx,
        }),
    }
}

/// Metrics port of every agent in next-month (each in its namespace).
const METRICS: &str = "127.0.0.1:7401";

/// `shoal_agent_received_bytes_total{source="local"}` of the agent on
/// `host`: bytes it copied from packages it held.
fn reused_locally(host: &Host) -> Result<u64, String> {
    let rt = NsRuntime::new(host)?;
    let body = rt.run(Duration::from_secs(20), async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tokio::time::timeout(Duration::from_secs(10), async {
            let mut s = tokio::net::TcpStream::connect(METRICS).await?;
            s.write_all(
                format!("GET /metrics HTTP/1.1\r\nHost: {METRICS}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
            let mut text = String::new();
            s.read_to_string(&mut text).await?;
            Ok::<_, std::io::Error>(text)
        })
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())
    });
    let body = body.map_err(|e| format!("metrics of {}: {e}", host.ip))?;
    body.lines()
        .find_map(|l| l.strip_prefix("shoal_agent_received_bytes_total{source=\"local\"} "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .ok_or_else(|| format!("metrics of {}: no local received bytes", host.ip))
}

fn next_month(work: &Path, c: &Config, changed: f64) -> Result<Outcome, String> {
    let edits = edit_plan(c.size, changed, c.seed)?;
    let hosts = c.agents as u64 + 1;
    // v1 and v2 (at most a tenth of the changed bytes longer) everywhere.
    let inserted: u64 = edits
        .iter()
        .filter(|e| e.kind == EditKind::Insert)
        .map(|e| e.len)
        .sum();
    let data = storage(work, c, 2 * hosts, c.size + inserted.div_ceil(2))?;
    let _logs = keep_logs(&data, c);
    let pki = Pki::new();
    let name = "bench/os-image";
    let v1_dir = data.path().join("v1");
    let (v1_content, v1_manifest, m1) = image_package(&pki, &v1_dir, name, c)?;
    let v2_content = data.path().join("v2/content");
    std::fs::create_dir_all(&v2_content).map_err(|e| format!("{}: {e}", v2_content.display()))?;
    let v2_size = write_edited(
        &v1_content.join("image.bin"),
        &v2_content.join("image.bin"),
        &edits,
        format!("{name}@2 edits").as_bytes(),
    )?;
    let v2_manifest = data.path().join("v2/package.manifest");
    let m2 = make_package(&pki, &v2_content, &v2_manifest, name, "2", c.chunking)?;
    let (fresh_chunks, fresh_bytes) = new_chunks(&m1, &m2);
    data.settle();
    check_interrupted()?;

    let tb = Testbed::new(c.agents + 1, Some(&tc_rate(c)))?;
    let extra = format!(
        "{}metrics:\n  listen: '{METRICS}'\n",
        limits_yaml(c.upload_slots)
    );
    let mut agents = start_swarm(
        &pki,
        &tb,
        &data.path().join("agents"),
        &extra,
        &v1_manifest,
        &v1_content,
    )?;
    eprintln!("next-month: setup, distributing v1 to {} hosts …", c.agents);
    let v1 = distribute(
        &mut agents,
        &tb,
        &Fetch {
            package: &format!("{name}@1"),
            timeout: c.timeout,
            outages: &[],
        },
    )?;
    data.settle();
    let local0: Vec<u64> = tb.hosts[1..]
        .iter()
        .map(reused_locally)
        .collect::<Result<_, _>>()?;
    agents[0].publish(&v2_manifest, &v2_content);
    check_interrupted()?;
    eprintln!("next-month: distributing v2 to {} hosts …", c.agents);
    let d = distribute(
        &mut agents,
        &tb,
        &Fetch {
            package: &format!("{name}@2"),
            timeout: c.timeout,
            outages: &[],
        },
    )?;
    let local: Vec<u64> = tb.hosts[1..]
        .iter()
        .zip(&local0)
        .map(|(h, l0)| reused_locally(h).map(|l| l.saturating_sub(*l0)))
        .collect::<Result<_, _>>()?;
    drop(agents);

    let pct = |b: u64| 100.0 * b as f64 / v2_size as f64;
    let received = &d.received[1..];
    let mean_received = received.iter().sum::<u64>() as f64 / received.len() as f64;
    let max_received = received.iter().copied().max().unwrap_or(0);
    let (overwrites, inserts): (Vec<&Edit>, Vec<&Edit>) =
        edits.iter().partition(|e| e.kind == EditKind::Overwrite);
    let changed_bytes: u64 = edits.iter().map(|e| e.len).sum();
    let notes = vec![
        format!(
            "v1 {:.1} MiB, {} chunks; v2 {:.1} MiB, {} chunks ({}); setup: v1 reached every \
             host in {:.1} s",
            mib(c.size),
            m1.chunks.len(),
            mib(v2_size),
            m2.chunks.len(),
            describe(&c.chunking),
            v1.makespan_s()
        ),
        format!(
            "changed: {:.1} MiB = {:.2} % ({} regions overwritten, {:.1} MiB; {} insertions, \
             {:.1} MiB); chunks of v2 not in v1: {fresh_chunks}, {:.1} MiB = {:.2} % (what \
             every host must fetch)",
            mib(changed_bytes),
            pct(changed_bytes),
            overwrites.len(),
            mib(overwrites.iter().map(|e| e.len).sum()),
            inserts.len(),
            mib(inserts.iter().map(|e| e.len).sum()),
            mib(fresh_bytes),
            pct(fresh_bytes)
        ),
        format!(
            "moved over the network per host (status bytes_received during the v2 fetch): mean \
             {:.1} MiB = {:.2} %, max {:.1} MiB = {:.2} % of the image (target <= 6 %)",
            mib(mean_received as u64),
            100.0 * mean_received / v2_size as f64,
            mib(max_received),
            pct(max_received)
        ),
        format!(
            "copied from v1 on each host (metric received_bytes_total{{source=\"local\"}}): \
             mean {:.1} MiB = {:.1} %",
            mib(local.iter().sum::<u64>() / local.len() as u64),
            pct(local.iter().sum::<u64>() / local.len() as u64)
        ),
        format!(
            "seed upload during v2: {:.1} MiB = {:.2} % of the image by its own count, {:.1} MiB \
             eth0 tx; full-image ideal {:.1} s",
            mib(d.sent[0]),
            pct(d.sent[0]),
            mib(d.tx_bytes[0]),
            ideal_seconds(v2_size, c.rate_bytes)
        ),
    ];
    Ok(Outcome {
        scenario: "next-month",
        hosts: c.agents,
        size: v2_size,
        ideal_s: ideal_seconds(fresh_bytes, c.rate_bytes),
        ideal_is: "bytes of new chunks / (rate x TCP share)".into(),
        result: d.method_result("shoal", v2_size),
        labels: labels(c.agents + 1, |_| String::new()),
        upload_unit: UploadUnit::Percent,
        notes,
        extra: serde_json::json!({
            "v1_size": c.size,
            "v2_size": v2_size,
            "v1_chunks": m1.chunks.len(),
            "v2_chunks": m2.chunks.len(),
            "changed_share": changed,
            "changed_bytes": changed_bytes,
            "edits": edits.iter().map(|e| serde_json::json!({
                "offset": e.offset, "len": e.len,
                "kind": if e.kind == EditKind::Insert { "insert" } else { "overwrite" },
            })).collect::<Vec<_>>(),
            "new_chunks": fresh_chunks,
            "new_chunk_bytes": fresh_bytes,
            "received_bytes": received,
            "received_share_mean": mean_received / v2_size as f64,
            "received_share_max": max_received as f64 / v2_size as f64,
            "reused_local_bytes": local,
            "seed_sent_bytes": d.sent[0],
            "v1_setup": v1.method_result("shoal", c.size).json(c.size, ideal_seconds(c.size, c.rate_bytes)),
        }),
    })
}

/// "fixed 1 MiB", "cdc avg 64 KiB".
pub fn describe(spec: &ChunkingSpec) -> String {
    let size = |b: u32| {
        if b >= 1 << 20 && b.is_multiple_of(1 << 20) {
            format!("{} MiB", b >> 20)
        } else {
            format!("{} KiB", b >> 10)
        }
    };
    match *spec {
        ChunkingSpec::Fixed { size: s } => format!("fixed {}", size(s)),
        ChunkingSpec::Cdc { avg, .. } => format!("cdc avg {}", size(avg)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn course_sizes_add_up_and_stay_in_bounds() {
        for (files, total) in [(5000, 1u64 << 30), (300, 128 << 20), (10, 10 << 10)] {
            let s = course_sizes(files, total, 1).expect("sizes");
            assert_eq!(s.len(), files);
            assert_eq!(s.iter().sum::<u64>(), total);
            assert!(s.iter().all(|&x| (COURSE_MIN..=COURSE_MAX).contains(&x)));
            assert_eq!(course_sizes(files, total, 1).expect("sizes"), s);
        }
        let s = course_sizes(5000, 1 << 30, 1).expect("sizes");
        let large = s.iter().filter(|&&x| x > COURSE_SMALL_MAX).count();
        assert!((10..=50).contains(&large), "{large} large files");
        assert!(course_sizes(10, 1 << 30, 1).is_err());
    }

    #[test]
    fn edits_change_the_share_asked_and_do_not_overlap() {
        let size = 128u64 << 20;
        let edits = edit_plan(size, 0.03, 7).expect("plan");
        let total: u64 = edits.iter().map(|e| e.len).sum();
        assert_eq!(total, (size as f64 * 0.03).round() as u64);
        assert_eq!(
            edits.iter().filter(|e| e.kind == EditKind::Insert).count(),
            INSERTIONS
        );
        for w in edits.windows(2) {
            let end = match w[0].kind {
                EditKind::Overwrite => w[0].offset + w[0].len,
                EditKind::Insert => w[0].offset,
            };
            assert!(end <= w[1].offset, "{:?} overlaps {:?}", w[0], w[1]);
        }
        assert!(edits.last().is_some_and(|e| e.offset + e.len <= size));
    }

    #[test]
    fn edited_copy_has_the_edits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, (0..100u8).collect::<Vec<_>>()).expect("write");
        let edits = [
            Edit {
                offset: 10,
                len: 5,
                kind: EditKind::Overwrite,
            },
            Edit {
                offset: 50,
                len: 3,
                kind: EditKind::Insert,
            },
        ];
        assert_eq!(write_edited(&a, &b, &edits, b"x").expect("edit"), 103);
        let got = std::fs::read(&b).expect("read");
        assert_eq!(&got[..10], &(0..10u8).collect::<Vec<_>>()[..]);
        assert_eq!(&got[15..50], &(15..50u8).collect::<Vec<_>>()[..]);
        assert_eq!(&got[53..], &(50..100u8).collect::<Vec<_>>()[..]);
    }

    #[test]
    fn churn_plan_is_a_fifth_inside_the_window() {
        let plan = churn_plan(30, 0.2, 100.0, 3);
        assert_eq!(plan.len(), 6);
        let hosts: HashSet<usize> = plan.iter().map(|o| o.host).collect();
        assert_eq!(hosts.len(), 6);
        assert!(plan.iter().all(|o| (1..=30).contains(&o.host)
            && (20.0..60.0).contains(&o.at_s)
            && (2.0..5.0).contains(&o.down_s)));
        assert_eq!(churn_plan(5, 0.2, 10.0, 3).len(), 1);
    }
}

//! `bench-swarm`: distribute one file from a seed to N hosts on a
//! network-namespace LAN with every link capped, with Shoal and with the
//! tools IT uses today — an HTTP fan-out (nginx on the seed, curl on every
//! host) and BitTorrent (opentracker and aria2c) — one after the other on
//! the same testbed, all data on one tmpfs. Per method: the makespan
//! against the ideal `size / link rate`, the seed's upload in copies, CPU
//! and peak memory per host, per-host completion times, and (optionally)
//! JSON and PNG charts. `bench-swarm pair` measures one Shoal transfer on
//! loopback without limits: throughput and CPU per GB.
//!
//! Run: `cargo run --release -p shoal-tests --bin bench-swarm -- --help`
//! (as root, for the namespaces, the tmpfs and installing the baselines'
//! tools from Debian).

#[cfg(target_os = "linux")]
fn main() {
    linux::main();
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("bench-swarm: needs Linux (network namespaces, tmpfs, /proc)");
    std::process::exit(77);
}

#[cfg(target_os = "linux")]
mod linux {
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use clap::{Parser, Subcommand, ValueEnum};
    use shoal_proto::chunking::ChunkingSpec;
    use shoal_proto::units::{parse_rate, parse_size};
    use shoal_tests::baselines::{
        self, ARIA2C, CURL, MKTORRENT, MethodResult, NGINX, OPENTRACKER, Payload, ProcStats, Setup,
        Storage, Tmpfs, cpu_seconds, peak_rss, tx_all,
    };
    use shoal_tests::netns::{Testbed, unavailable};
    use shoal_tests::plot::{self, Series};
    use shoal_tests::process::{AgentOptions, AgentProcess, wait_for_peers};
    use shoal_tests::swarm::Pki;

    /// TCP payload gets about this share of a tbf rate on this kind of
    /// machine (PRODUCT.md); the ideal makespan uses the rate TCP can reach.
    const TCP_SHARE: f64 = 0.957;
    const MIB: f64 = (1u64 << 20) as f64;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
    enum Method {
        /// Shoal agents (the seed publishes, every host fetches).
        Shoal,
        /// nginx on the seed, curl on every other host at once.
        Http,
        /// opentracker and a seeding aria2c on the seed, aria2c everywhere else.
        Bittorrent,
    }

    impl Method {
        fn name(self) -> &'static str {
            match self {
                Method::Shoal => "shoal",
                Method::Http => "http",
                Method::Bittorrent => "bittorrent",
            }
        }
    }

    #[derive(Debug, Parser)]
    #[command(
        name = "bench-swarm",
        about = "Shoal, an HTTP fan-out and BitTorrent distributing one file on a namespace LAN"
    )]
    struct Args {
        #[command(subcommand)]
        mode: Option<Mode>,
        /// Hosts besides the seed.
        #[arg(long, default_value_t = 10)]
        agents: usize,
        #[arg(long, default_value = "512MiB", value_parser = size)]
        size: u64,
        /// Link rate of every host, both ways (tc tbf syntax and ours alike).
        #[arg(long, default_value = "100Mbit/s")]
        rate: String,
        /// Methods to run, one after the other on the same testbed.
        #[arg(long, value_delimiter = ',', default_value = "shoal,http,bittorrent")]
        methods: Vec<Method>,
        /// Shoal's chunk size (fixed chunking).
        #[arg(long, default_value = "4MiB", value_parser = size)]
        chunk_size: u64,
        /// BitTorrent piece size, a power of two [default: at most 2048
        /// pieces, 256 KiB (mktorrent's default) to 16 MiB].
        #[arg(long, value_parser = size)]
        piece_size: Option<u64>,
        /// Give up on a method after this many seconds.
        #[arg(long, default_value_t = 1800)]
        timeout: u64,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write PNG charts here (made if missing).
        #[arg(long)]
        plot_dir: Option<PathBuf>,
        /// Where every method keeps the payload and its copies: the disk
        /// (under the temporary directory) or one tmpfs.
        #[arg(long, value_enum, default_value = "disk")]
        storage: StorageKind,
        /// Shoal agents' `limits.upload_slots`.
        #[arg(long, default_value_t = 4)]
        upload_slots: u32,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
    enum StorageKind {
        Disk,
        Tmpfs,
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

    fn write_package(
        pki: &Pki,
        dir: &Path,
        name: &str,
        size: u64,
        chunk: u64,
    ) -> (PathBuf, PathBuf) {
        eprintln!("writing {} MiB of content …", size >> 20);
        let spec =
            ChunkingSpec::fixed(u32::try_from(chunk).expect("chunk size")).expect("chunk size");
        pki.write_package(dir, name, size, spec)
    }

    pub fn main() {
        let args = Args::parse();
        if let Some(Mode::Pair { size }) = args.mode {
            return pair(size);
        }
        if let Some(why) = unavailable() {
            eprintln!("bench-swarm: {why}");
            std::process::exit(77);
        }
        match compare(&args) {
            Ok(true) => {}
            Ok(false) => std::process::exit(1),
            Err(e) => {
                eprintln!("bench-swarm: {e}");
                std::process::exit(1);
            }
        }
    }

    /// What the run is about, for the table's heading and the JSON.
    #[derive(Debug)]
    struct Run {
        hosts: usize,
        size: u64,
        rate_bytes: u64,
        ideal_s: f64,
        piece_size: u64,
    }

    /// The piece size torrent makers choose: the smallest power of two that
    /// keeps the torrent at 2048 pieces or fewer, from mktorrent's 256 KiB
    /// default up to 16 MiB (256 MiB: 256 KiB, 2 GiB: 1 MiB, 6 GiB: 4 MiB).
    fn auto_piece_size(size: u64) -> u64 {
        let mut p: u64 = 256 << 10;
        while size.div_ceil(p) > 2048 && p < 16 << 20 {
            p *= 2;
        }
        p
    }

    /// Runs every method; `Ok(false)` when one of them failed (the others
    /// are still reported).
    fn compare(args: &Args) -> Result<bool, String> {
        let mut methods: Vec<Method> = Vec::new();
        for m in &args.methods {
            if !methods.contains(m) {
                methods.push(*m);
            }
        }
        if methods.is_empty() {
            return Err("--methods: name at least one".into());
        }
        if args.agents == 0 || args.agents > 250 {
            return Err("--agents: 1 to 250".into());
        }
        let rate_bytes = parse_rate(&args.rate).map_err(|e| format!("--rate: {e}"))?;
        if rate_bytes == 0 {
            return Err("--rate: the benchmark needs a limited rate".into());
        }
        let piece_size = args
            .piece_size
            .unwrap_or_else(|| auto_piece_size(args.size));
        let mut tools = Vec::new();
        if methods.contains(&Method::Http) {
            tools.extend([NGINX, CURL]);
        }
        if methods.contains(&Method::Bittorrent) {
            // curl asks the tracker whether the seed has announced.
            tools.extend([ARIA2C, OPENTRACKER, MKTORRENT, CURL]);
            if !piece_size.is_power_of_two() || !(1 << 15..=1 << 28).contains(&piece_size) {
                return Err(format!(
                    "--piece-size {piece_size}: a power of two from 32KiB to 256MiB"
                ));
            }
        }
        baselines::ensure_installed(&tools, args.plot_dir.is_some())?;
        if let Some(dir) = &args.plot_dir {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            plot::register_font(Path::new(baselines::FONT))?;
        }

        // Everything in one place: the payload, N copies, and room for the
        // agents' stores and logs, the torrent and the servers' logs.
        let hosts = args.agents + 1;
        let data_size = args.size * hosts as u64 + (256 << 20) + (32 << 20) * hosts as u64;
        baselines::catch_interrupts()?;
        let work = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
        let data = work.path().join("data");
        let tmpfs = match args.storage {
            StorageKind::Tmpfs => {
                let headroom = 1u64 << 30;
                let available = baselines::mem_available()?;
                if available < data_size + headroom {
                    return Err(format!(
                        "not enough free memory: the tmpfs for {hosts} copies of {} MiB plus \
                         slack is {} MiB, and the processes need about {} MiB more, but \
                         MemAvailable is {} MiB; use --storage disk, a smaller --size or fewer \
                         --agents",
                        args.size >> 20,
                        data_size >> 20,
                        headroom >> 20,
                        available >> 20
                    ));
                }
                Storage::Tmpfs(Tmpfs::mount(&data, data_size)?)
            }
            StorageKind::Disk => {
                std::fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
                let available = baselines::disk_available(&data)?;
                if available < data_size {
                    return Err(format!(
                        "not enough disk: {hosts} copies of {} MiB plus slack is {} MiB, but \
                         {} has {} MiB free",
                        args.size >> 20,
                        data_size >> 20,
                        data.display(),
                        available >> 20
                    ));
                }
                Storage::Disk(data)
            }
        };
        let pki = Pki::new();
        let (content, manifest) = write_package(
            &pki,
            tmpfs.path(),
            "bench/image",
            args.size,
            args.chunk_size,
        );
        let payload = Payload::new(&content.join("image.bin"))?;
        let tc_rate = format!("{}bit", rate_bytes * 8);
        let tb = Testbed::new(hosts, Some(&tc_rate))?;
        let run = Run {
            hosts: args.agents,
            size: args.size,
            rate_bytes,
            ideal_s: args.size as f64 / (rate_bytes as f64 * TCP_SHARE),
            piece_size,
        };

        let mut results: Vec<MethodResult> = Vec::new();
        let mut failures: Vec<(&str, String)> = Vec::new();
        for m in methods {
            if baselines::interrupted() {
                failures.push((m.name(), "interrupted".into()));
                continue;
            }
            let dir = tmpfs.path().join(m.name());
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            eprintln!("{}: distributing to {} hosts …", m.name(), args.agents);
            let timeout = Duration::from_secs(args.timeout);
            let setup = Setup {
                tb: &tb,
                dir: dir.clone(),
                payload: &payload,
                timeout,
            };
            // Each returns only after every process it started has ended.
            let r = match m {
                Method::Shoal => shoal(&pki, &tb, &dir, &manifest, &content, args),
                Method::Http => baselines::run_http(&setup),
                Method::Bittorrent => baselines::run_bittorrent(&setup, piece_size),
            };
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                eprintln!("bench-swarm: removing {}: {e}", dir.display());
            }
            tmpfs.settle();
            match r {
                Ok(r) => {
                    eprintln!("{}: done in {:.1} s", m.name(), r.makespan_s);
                    results.push(r);
                }
                Err(e) => {
                    eprintln!("{}: FAILED: {e}", m.name());
                    failures.push((m.name(), e));
                }
            }
        }
        drop(tb);
        drop(tmpfs);
        drop(work);

        report(args, &run, &results, &failures);
        if let Some(path) = &args.json {
            let v = json(args, &run, &results, &failures);
            std::fs::write(
                path,
                serde_json::to_vec_pretty(&v).map_err(|e| format!("JSON: {e}"))?,
            )
            .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        if let Some(dir) = &args.plot_dir {
            plots(dir, args, &run, &results)?;
        }
        Ok(failures.is_empty())
    }

    /// Shoal: agents on every host (the seed publishes), every other host
    /// fetches at once and waits until its copy is complete.
    fn shoal(
        pki: &Pki,
        tb: &Testbed,
        dir: &Path,
        manifest: &Path,
        content: &Path,
        args: &Args,
    ) -> Result<MethodResult, String> {
        let (size, timeout, upload_slots) = (
            args.size,
            Duration::from_secs(args.timeout),
            args.upload_slots,
        );
        let n = tb.hosts.len() - 1;
        let extra = format!("limits:\n  upload_slots: {upload_slots}\n");
        let hosts: Vec<AgentProcess> = tb
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let id = if i == 0 {
                    "seed".to_owned()
                } else {
                    format!("host-{i}")
                };
                AgentProcess::start_with(
                    pki,
                    &id,
                    &dir.join(&id),
                    AgentOptions {
                        extra: extra.clone(),
                        ..AgentOptions::on(h)
                    },
                )
            })
            .collect();
        hosts[0].publish(manifest, content);
        wait_for_peers(&hosts, n, None, Duration::from_secs(60));
        let pids: Vec<u32> = hosts
            .iter()
            .map(|h| h.pid().ok_or_else(|| format!("{} has no process", h.id)))
            .collect::<Result<_, _>>()?;
        let sent = |h: &AgentProcess| h.status_u64("bytes_sent");
        let sent0: Vec<u64> = hosts.iter().map(sent).collect();
        let cpu0: Vec<f64> = pids
            .iter()
            .map(|&p| cpu_seconds(p).unwrap_or(0.0))
            .collect();
        let mut rss: Vec<u64> = pids.iter().map(|&p| peak_rss(p).unwrap_or(0)).collect();
        let tx0 = tx_all(tb)?;

        // Each host's completion is when its `shoal fetch --wait` returns
        // (the agent reports the package complete and verified), as curl's
        // exit is for HTTP; progress for the timeline is polled every
        // 2 s, so the polling costs the CPU little.
        let started = Instant::now();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<(usize, f64, Result<(), String>)>();
        let mut done_at: Vec<Option<f64>> = vec![None; n];
        let mut timeline: Vec<(f64, Vec<u64>)> = Vec::new();
        let mut failed: Option<String> = None;
        std::thread::scope(|s| -> Result<(), String> {
            for (i, h) in hosts[1..].iter().enumerate() {
                let tx = done_tx.clone();
                s.spawn(move || {
                    let run = h.shoal(&["fetch", "bench/image@1", "--wait", "--json", "-q"]);
                    let t = started.elapsed().as_secs_f64();
                    let r = if run.code == 0 {
                        Ok(())
                    } else {
                        Err(format!("{}: {}{}", h.id, run.stdout, run.stderr))
                    };
                    let _ = tx.send((i, t, r));
                });
            }
            drop(done_tx);
            let mut next_sample = Instant::now();
            while done_at.iter().any(Option::is_none) && failed.is_none() {
                if Instant::now() >= next_sample {
                    let t = started.elapsed().as_secs_f64();
                    let row = hosts[1..]
                        .iter()
                        .map(|h| done_bytes(h, "bench/image@1").0)
                        .collect();
                    timeline.push((t, row));
                    for (r, &p) in rss.iter_mut().zip(&pids) {
                        *r = (*r).max(peak_rss(p).unwrap_or(0));
                    }
                    next_sample = Instant::now() + Duration::from_secs(2);
                }
                match done_rx.recv_timeout(Duration::from_millis(100)) {
                    Ok((i, t, Ok(()))) => done_at[i] = Some(t),
                    Ok((_, _, Err(e))) => failed = Some(e),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                }
                if baselines::interrupted() {
                    failed = Some("interrupted".into());
                }
                if started.elapsed() > timeout {
                    let left: Vec<&str> = hosts[1..]
                        .iter()
                        .zip(&done_at)
                        .filter(|(_, d)| d.is_none())
                        .map(|(h, _)| h.id.as_str())
                        .collect();
                    failed = Some(format!("not done after {timeout:?}: {}", left.join(", ")));
                }
            }
            if failed.is_some() {
                // The fetch threads end when their agents do.
                for h in &hosts[1..] {
                    let _ = h.shoal(&["cancel", "bench/image@1"]);
                }
            }
            Ok(())
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        let final_row: Vec<u64> = hosts[1..]
            .iter()
            .map(|h| done_bytes(h, "bench/image@1").0)
            .collect();
        timeline.push((started.elapsed().as_secs_f64(), final_row));
        let tx1 = tx_all(tb)?;
        let stats: Vec<ProcStats> = pids
            .iter()
            .zip(&cpu0)
            .zip(&rss)
            .map(|((&p, c0), &r)| ProcStats {
                cpu_s: (cpu_seconds(p).unwrap_or(0.0) - c0).max(0.0),
                peak_rss: r.max(peak_rss(p).unwrap_or(0)),
            })
            .collect();
        let bytes_sent: Vec<u64> = hosts
            .iter()
            .zip(&sent0)
            .map(|(h, s0)| sent(h).saturating_sub(*s0))
            .collect();
        drop(hosts);
        let completion_s: Vec<f64> = done_at.iter().map(|d| d.unwrap_or(f64::NAN)).collect();
        Ok(MethodResult {
            method: "shoal".into(),
            makespan_s: completion_s.iter().copied().fold(0.0, f64::max),
            completion_s,
            timeline,
            tx_bytes: tx0
                .iter()
                .zip(&tx1)
                .map(|(a, b)| b.saturating_sub(*a))
                .collect(),
            uploaded: bytes_sent.clone(),
            uploaded_source: "shoal status bytes_sent",
            seed_procs: vec![("shoal-agent".into(), stats[0])],
            host_procs: stats[1..].to_vec(),
            host_proc_name: "shoal-agent".into(),
            extra: serde_json::json!({
                "bytes_sent": bytes_sent,
                "seed_bytes_sent_copies": bytes_sent[0] as f64 / size as f64,
            }),
        })
    }

    fn mib(b: u64) -> f64 {
        b as f64 / MIB
    }

    fn report(args: &Args, run: &Run, results: &[MethodResult], failures: &[(&str, String)]) {
        println!(
            "\nSwarm distribution: 1 seed -> {} hosts, {} MiB, {} links, ideal {:.1} s \
             (size / (rate x {TCP_SHARE}))",
            run.hosts,
            run.size >> 20,
            args.rate,
            run.ideal_s
        );
        println!(
            "Shoal chunks {} MiB fixed; BitTorrent pieces {} KiB. Seed upload = the seed's \
             eth0 tx (frames) / size. CPU over the distribution; RSS = VmHWM.",
            args.chunk_size >> 20,
            run.piece_size >> 10
        );
        println!(
            "\n{:<11} {:>10} {:>8} {:>6} {:>12} {:>9} {:>8} {:>9} {:>10} {:>10}",
            "method",
            "makespan s",
            "ideal s",
            "ratio",
            "seed upload",
            "CPU mean",
            "CPU max",
            "seed CPU",
            "peak RSS",
            "seed RSS"
        );
        println!(
            "{:<11} {:>10} {:>8} {:>6} {:>12} {:>9} {:>8} {:>9} {:>10} {:>10}",
            "", "", "", "", "copies", "s/host", "s/host", "s", "MiB/host", "MiB"
        );
        for r in results {
            println!(
                "{:<11} {:>10.1} {:>8.1} {:>6.2} {:>12.2} {:>9.2} {:>8.2} {:>9.2} {:>10.1} {:>10.1}",
                r.method,
                r.makespan_s,
                run.ideal_s,
                r.makespan_s / run.ideal_s,
                r.seed_copies(run.size),
                r.host_cpu_mean(),
                r.host_cpu_max(),
                r.seed_cpu(),
                mib(r.host_rss_max()),
                mib(r.seed_rss()),
            );
        }
        for (m, e) in failures {
            println!("{m:<11} FAILED: {}", e.lines().next().unwrap_or(""));
        }
        println!();
        for r in results {
            let mut sorted: Vec<f64> = r.completion_s.clone();
            sorted.sort_by(f64::total_cmp);
            println!(
                "  {:<11} completions (s) {}",
                r.method,
                sorted
                    .iter()
                    .map(|t| format!("{t:.1}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            println!(
                "  {:<11} processes: seed {}; hosts {}",
                "",
                r.seed_procs
                    .iter()
                    .map(|(n, p)| format!("{n} {:.2} s {:.1} MiB", p.cpu_s, mib(p.peak_rss)))
                    .collect::<Vec<_>>()
                    .join(", "),
                r.host_proc_name
            );
            if r.method == "shoal" {
                println!(
                    "  {:<11} seed upload by its own count (bytes_sent): {:.2} copies",
                    "",
                    r.uploaded.first().copied().unwrap_or(0) as f64 / run.size as f64
                );
            }
        }
    }

    fn versions() -> serde_json::Value {
        let mut v = serde_json::Map::new();
        for p in ["nginx-light", "curl", "aria2", "opentracker", "mktorrent"] {
            v.insert(p.into(), baselines::package_version(p).into());
        }
        let commit = baselines::run_ok(
            std::process::Command::new("git")
                .args(["rev-parse", "--short", "HEAD"])
                .current_dir(env!("CARGO_MANIFEST_DIR")),
            Duration::from_secs(10),
            "git rev-parse",
        )
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into());
        v.insert(
            "shoal".into(),
            format!("{} ({commit})", env!("CARGO_PKG_VERSION")).into(),
        );
        v.into()
    }

    fn json(
        args: &Args,
        run: &Run,
        results: &[MethodResult],
        failures: &[(&str, String)],
    ) -> serde_json::Value {
        serde_json::json!({
            "agents": run.hosts,
            "size": run.size,
            "rate": args.rate,
            "rate_bytes_per_s": run.rate_bytes,
            "tcp_share": TCP_SHARE,
            "ideal_s": run.ideal_s,
            "chunk_size": args.chunk_size,
            "piece_size": run.piece_size,
            "versions": versions(),
            "methods": results.iter().map(|r| r.json(run.size, run.ideal_s)).collect::<Vec<_>>(),
            "failures": failures.iter()
                .map(|(m, e)| serde_json::json!({"method": m, "error": e}))
                .collect::<Vec<_>>(),
        })
    }

    /// Per method: each host's share of the package over time, and bytes
    /// uploaded per host; for all methods: hosts done over time.
    fn plots(dir: &Path, args: &Args, run: &Run, results: &[MethodResult]) -> Result<(), String> {
        let size = run.size as f64;
        let about = format!("{} hosts, {} MiB, {}", run.hosts, run.size >> 20, args.rate);
        for r in results {
            let series: Vec<Series> =
                (0..run.hosts)
                    .map(|i| Series {
                        label: format!("h{}", i + 1),
                        points: std::iter::once((0.0, 0.0))
                            .chain(r.timeline.iter().map(|(t, row)| {
                                (*t, row.get(i).copied().unwrap_or(0) as f64 / size)
                            }))
                            .collect(),
                    })
                    .collect();
            plot::lines(
                &dir.join(format!("{}-completion.png", r.method)),
                &format!("{}: share of the package held per host ({about})", r.method),
                "seconds",
                "fraction held",
                &series,
                1.0,
                run.hosts <= 16,
            )?;
            let labels: Vec<String> = std::iter::once("seed".to_owned())
                .chain((1..=run.hosts).map(|i| format!("h{i}")))
                .collect();
            let copies: Vec<f64> = r.uploaded.iter().map(|&b| b as f64 / size).collect();
            plot::bars(
                &dir.join(format!("{}-upload.png", r.method)),
                &format!("{}: uploaded per host ({about})", r.method),
                &format!("copies ({})", r.uploaded_source),
                &labels,
                &copies,
            )?;
        }
        let n = run.hosts as f64;
        let series: Vec<Series> = results
            .iter()
            .map(|r| {
                let mut done: Vec<f64> = r.completion_s.clone();
                done.sort_by(f64::total_cmp);
                let mut points = vec![(0.0, 0.0)];
                for (k, t) in done.iter().enumerate() {
                    points.push((*t, k as f64 / n));
                    points.push((*t, (k + 1) as f64 / n));
                }
                Series {
                    label: r.method.clone(),
                    points,
                }
            })
            .collect();
        let mut series = series;
        series.push(Series {
            label: "ideal".into(),
            points: vec![(run.ideal_s, 0.0), (run.ideal_s, 1.0)],
        });
        plot::lines(
            &dir.join("completion-all.png"),
            &format!(
                "hosts holding a verified copy ({about}; ideal {:.1} s)",
                run.ideal_s
            ),
            "seconds",
            "fraction of hosts done",
            &series,
            1.0,
            true,
        )?;
        eprintln!("charts in {}", dir.display());
        Ok(())
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
            peak_rss(agent_pid).unwrap_or(0) as f64 / MIB
        );
    }
}

//! `bench-swarm`: distribute one file from a seed to N hosts on a
//! network-namespace LAN with every link capped, with Shoal and with the
//! tools IT uses today — an HTTP fan-out (nginx on the seed, curl on every
//! host) and BitTorrent (opentracker and aria2c) — one after the other on
//! the same testbed, all data on one tmpfs. Per method: the makespan
//! against the ideal `size / link rate`, the seed's upload in copies, CPU
//! and peak memory per host, per-host completion times, and (optionally)
//! JSON and PNG charts. `bench-swarm pair` measures one Shoal transfer on
//! loopback without limits: throughput and CPU per GB. `bench-swarm
//! scenario course|subnets|churn|next-month` runs one of the deployment
//! scenarios with Shoal alone (`shoal_tests::scenarios`).
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
        self, ARIA2C, CURL, MKTORRENT, MethodResult, NGINX, OPENTRACKER, Payload, Setup,
        StorageKind, cpu_seconds, peak_rss,
    };
    use shoal_tests::netns::{Testbed, unavailable};
    use shoal_tests::plot::{self, Series};
    use shoal_tests::process::AgentProcess;
    use shoal_tests::scenarios::{self, Outcome, Scenario, UploadUnit};
    use shoal_tests::swarm::Pki;
    use shoal_tests::swarm_run::{self, Fetch, TCP_SHARE, ideal_seconds};

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

    /// What every mode but `pair` takes.
    #[derive(Debug, clap::Args)]
    struct Common {
        /// Link rate of every host, both ways (tc tbf syntax and ours alike).
        #[arg(long, default_value = "100Mbit/s")]
        rate: String,
        /// Give up on a distribution after this many seconds.
        #[arg(long, default_value_t = 1800)]
        timeout: u64,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write PNG charts here (made if missing).
        #[arg(long)]
        plot_dir: Option<PathBuf>,
        /// Where the payload and every copy of it live: the disk (under
        /// the temporary directory) or one tmpfs.
        #[arg(long, value_enum, default_value = "disk")]
        storage: StorageKind,
        /// Shoal agents' `limits.upload_slots`.
        #[arg(long, default_value_t = 8)]
        upload_slots: u32,
    }

    impl Common {
        fn rate_bytes(&self) -> Result<u64, String> {
            let r = parse_rate(&self.rate).map_err(|e| format!("--rate: {e}"))?;
            if r == 0 {
                return Err("--rate: the benchmark needs a limited rate".into());
            }
            Ok(r)
        }

        /// Installs the charts' font if needed and makes the plot directory.
        fn prepare_plots(&self) -> Result<(), String> {
            if let Some(dir) = &self.plot_dir {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                plot::register_font(Path::new(baselines::FONT))?;
            }
            Ok(())
        }

        fn write_json(&self, v: &serde_json::Value) -> Result<(), String> {
            let Some(path) = &self.json else {
                return Ok(());
            };
            std::fs::write(
                path,
                serde_json::to_vec_pretty(v).map_err(|e| format!("JSON: {e}"))?,
            )
            .map_err(|e| format!("{}: {e}", path.display()))
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
        #[command(flatten)]
        common: Common,
    }

    #[derive(Debug, Subcommand)]
    enum Mode {
        /// Two agents on loopback, no limits: throughput and CPU per GB.
        Pair {
            #[arg(long, default_value = "2GiB", value_parser = size)]
            size: u64,
        },
        /// One deployment scenario, Shoal alone.
        Scenario(ScenarioArgs),
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
    enum ScenarioName {
        /// A directory of `--files` files (1 KiB to 50 MiB, mostly small).
        Course,
        /// Two subnets behind a router; the controller's roster across.
        Subnets,
        /// `--kill-share` of the hosts killed mid-run and restarted.
        Churn,
        /// Every host holds v1; v2 has `--changed` of its bytes changed.
        NextMonth,
    }

    #[derive(Debug, clap::Args)]
    struct ScenarioArgs {
        #[arg(value_enum)]
        name: ScenarioName,
        /// Receiving hosts besides the seed (subnets: the seed and half of
        /// them on subnet 0, the rest on subnet 1).
        #[arg(long, default_value_t = 30)]
        agents: usize,
        /// Bytes of the package (next-month: of v1).
        #[arg(long, default_value = "1GiB", value_parser = size)]
        size: u64,
        /// `fixed:SIZE` or `cdc:AVERAGE` [default: fixed:1MiB; next-month
        /// cdc:64KiB].
        #[arg(long, value_parser = chunking)]
        chunking: Option<ChunkingSpec>,
        /// course: how many files.
        #[arg(long, default_value_t = 5000)]
        files: usize,
        /// churn: share of the hosts killed and restarted.
        #[arg(long, default_value_t = 0.2)]
        kill_share: f64,
        /// next-month: share of the image's bytes changed.
        #[arg(long, default_value_t = 0.03)]
        changed: f64,
        /// Seed of every random choice (file sizes, edits, who dies when).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Copy the agents' and the controller's logs here at the end.
        #[arg(long)]
        logs: Option<PathBuf>,
        #[command(flatten)]
        common: Common,
    }

    fn size(s: &str) -> Result<u64, String> {
        parse_size(s).map_err(|e| e.to_string())
    }

    /// `fixed:SIZE`, `cdc:AVERAGE`, or `fixed` / `cdc` with Shoal's
    /// default sizes.
    fn chunking(s: &str) -> Result<ChunkingSpec, String> {
        let (kind, n) = s.split_once(':').unwrap_or((s, ""));
        let n = |default: u32| -> Result<u32, String> {
            if n.is_empty() {
                return Ok(default);
            }
            u32::try_from(size(n)?).map_err(|_| format!("{n}: too large"))
        };
        match kind {
            "fixed" => ChunkingSpec::fixed(n(shoal_proto::chunking::DEFAULT_FIXED_SIZE)?),
            "cdc" => ChunkingSpec::cdc(n(shoal_proto::chunking::DEFAULT_CDC_AVG)?),
            _ => return Err(format!("{s}: fixed:SIZE or cdc:AVERAGE")),
        }
        .map_err(|e| e.to_string())
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
        let r = match &args.mode {
            Some(Mode::Scenario(a)) => scenario(a).map(|()| true),
            _ => compare(&args),
        };
        match r {
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
        let rate_bytes = args.common.rate_bytes()?;
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
        baselines::ensure_installed(&tools, args.common.plot_dir.is_some())?;
        args.common.prepare_plots()?;

        // Everything in one place: the payload, N copies, and room for the
        // agents' stores and logs, the torrent and the servers' logs.
        let hosts = args.agents + 1;
        let data_size = args.size * hosts as u64 + (256 << 20) + (32 << 20) * hosts as u64;
        baselines::catch_interrupts()?;
        let work = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
        let tmpfs = baselines::prepare_storage(
            args.common.storage,
            &work.path().join("data"),
            data_size,
            &format!("{hosts} copies of {} MiB plus slack", args.size >> 20),
            "a smaller --size or fewer --agents",
        )?;
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
            ideal_s: ideal_seconds(args.size, rate_bytes),
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
            let timeout = Duration::from_secs(args.common.timeout);
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
        args.common
            .write_json(&json(args, &run, rate_bytes, &results, &failures))?;
        if let Some(dir) = &args.common.plot_dir {
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
        let extra = swarm_run::limits_yaml(args.common.upload_slots);
        let mut agents = swarm_run::start_swarm(pki, tb, dir, &extra, manifest, content)?;
        let d = swarm_run::distribute(
            &mut agents,
            tb,
            &Fetch {
                package: "bench/image@1",
                timeout: Duration::from_secs(args.common.timeout),
                outages: &[],
            },
        )?;
        drop(agents);
        Ok(d.method_result("shoal", args.size))
    }

    fn mib(b: u64) -> f64 {
        b as f64 / MIB
    }

    /// The table every mode prints: one row per result.
    fn table(rows: &[(&str, &MethodResult)], size: u64, ideal_s: f64) {
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
        for (label, r) in rows {
            println!(
                "{:<11} {:>10.1} {:>8.1} {:>6.2} {:>12.2} {:>9.2} {:>8.2} {:>9.2} {:>10.1} {:>10.1}",
                label,
                r.makespan_s,
                ideal_s,
                r.makespan_s / ideal_s,
                r.seed_copies(size),
                r.host_cpu_mean(),
                r.host_cpu_max(),
                r.seed_cpu(),
                mib(r.host_rss_max()),
                mib(r.seed_rss()),
            );
        }
    }

    /// Sorted completion times, processes, and Shoal's own upload count.
    fn details(label: &str, r: &MethodResult, size: u64) {
        let mut sorted: Vec<f64> = r.completion_s.clone();
        sorted.sort_by(f64::total_cmp);
        println!(
            "  {label:<11} completions (s) {}",
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
                r.uploaded.first().copied().unwrap_or(0) as f64 / size as f64
            );
        }
    }

    fn report(args: &Args, run: &Run, results: &[MethodResult], failures: &[(&str, String)]) {
        println!(
            "\nSwarm distribution: 1 seed -> {} hosts, {} MiB, {} links, ideal {:.1} s \
             (size / (rate x {TCP_SHARE}))",
            run.hosts,
            run.size >> 20,
            args.common.rate,
            run.ideal_s
        );
        println!(
            "Shoal chunks {} MiB fixed; BitTorrent pieces {} KiB. Seed upload = the seed's \
             eth0 tx (frames) / size. CPU over the distribution; RSS = VmHWM.",
            args.chunk_size >> 20,
            run.piece_size >> 10
        );
        let rows: Vec<(&str, &MethodResult)> =
            results.iter().map(|r| (r.method.as_str(), r)).collect();
        table(&rows, run.size, run.ideal_s);
        for (m, e) in failures {
            println!("{m:<11} FAILED: {}", e.lines().next().unwrap_or(""));
        }
        println!();
        for r in results {
            details(&r.method, r, run.size);
        }
    }

    /// Shoal's version and commit.
    fn shoal_version() -> String {
        let commit = baselines::run_ok(
            std::process::Command::new("git")
                .args(["rev-parse", "--short", "HEAD"])
                .current_dir(env!("CARGO_MANIFEST_DIR")),
            Duration::from_secs(10),
            "git rev-parse",
        )
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into());
        format!("{} ({commit})", env!("CARGO_PKG_VERSION"))
    }

    fn versions() -> serde_json::Value {
        let mut v = serde_json::Map::new();
        for p in ["nginx-light", "curl", "aria2", "opentracker", "mktorrent"] {
            v.insert(p.into(), baselines::package_version(p).into());
        }
        v.insert("shoal".into(), shoal_version().into());
        v.into()
    }

    fn json(
        args: &Args,
        run: &Run,
        rate_bytes: u64,
        results: &[MethodResult],
        failures: &[(&str, String)],
    ) -> serde_json::Value {
        serde_json::json!({
            "agents": run.hosts,
            "size": run.size,
            "rate": args.common.rate,
            "rate_bytes_per_s": rate_bytes,
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

    /// A result's two charts: `<name>-completion.png` (each host's share
    /// of the package over time) and `<name>-upload.png` (bytes uploaded
    /// per host). `labels` name every host, seed first; with more than 16
    /// hosts only labels ending in ")" go into the legend.
    fn host_plots(
        dir: &Path,
        name: &str,
        about: &str,
        r: &MethodResult,
        size: u64,
        labels: &[String],
        unit: UploadUnit,
    ) -> Result<(), String> {
        let size = size as f64;
        let hosts = labels.len() - 1;
        let legend = |l: &str| hosts <= 16 || l.ends_with(')');
        let series: Vec<Series> = labels[1..]
            .iter()
            .enumerate()
            .map(|(i, l)| Series {
                label: if legend(l) { l.clone() } else { String::new() },
                points: std::iter::once((0.0, 0.0))
                    .chain(
                        r.timeline
                            .iter()
                            .map(|(t, row)| (*t, row.get(i).copied().unwrap_or(0) as f64 / size)),
                    )
                    .collect(),
            })
            .collect();
        plot::lines(
            &dir.join(format!("{name}-completion.png")),
            &format!("{}: share of the package held per host ({about})", r.method),
            "seconds",
            "fraction held",
            &series,
            1.0,
            labels[1..].iter().any(|l| legend(l)),
        )?;
        let (scale, what) = match unit {
            UploadUnit::Copies => (1.0 / size, "copies"),
            UploadUnit::Percent => (100.0 / size, "% of the package"),
        };
        let values: Vec<f64> = r.uploaded.iter().map(|&b| b as f64 * scale).collect();
        plot::bars(
            &dir.join(format!("{name}-upload.png")),
            &format!("{}: uploaded per host ({about})", r.method),
            &format!("{what} ({})", r.uploaded_source),
            labels,
            &values,
        )
    }

    /// Per method: [`host_plots`]; for all methods: hosts done over time.
    fn plots(dir: &Path, args: &Args, run: &Run, results: &[MethodResult]) -> Result<(), String> {
        let about = format!(
            "{} hosts, {} MiB, {}",
            run.hosts,
            run.size >> 20,
            args.common.rate
        );
        let labels: Vec<String> = std::iter::once("seed".to_owned())
            .chain((1..=run.hosts).map(|i| format!("h{i}")))
            .collect();
        for r in results {
            host_plots(
                dir,
                &r.method,
                &about,
                r,
                run.size,
                &labels,
                UploadUnit::Copies,
            )?;
        }
        let n = run.hosts as f64;
        let mut series: Vec<Series> = results
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

    /// `bench-swarm scenario NAME`: runs it, prints its table and notes,
    /// writes its JSON and charts.
    fn scenario(a: &ScenarioArgs) -> Result<(), String> {
        let rate_bytes = a.common.rate_bytes()?;
        baselines::ensure_installed(&[], a.common.plot_dir.is_some())?;
        a.common.prepare_plots()?;
        let s = match a.name {
            ScenarioName::Course => Scenario::Course { files: a.files },
            ScenarioName::Subnets => Scenario::Subnets,
            ScenarioName::Churn => Scenario::Churn {
                kill_share: a.kill_share,
            },
            ScenarioName::NextMonth => Scenario::NextMonth { changed: a.changed },
        };
        let default = match s {
            Scenario::NextMonth { .. } => ChunkingSpec::cdc(64 << 10),
            _ => ChunkingSpec::fixed(1 << 20),
        }
        .map_err(|e| e.to_string())?;
        let c = scenarios::Config {
            agents: a.agents,
            size: a.size,
            rate_bytes,
            chunking: a.chunking.unwrap_or(default),
            timeout: Duration::from_secs(a.common.timeout),
            storage: a.common.storage,
            upload_slots: a.common.upload_slots,
            seed: a.seed,
            logs: a.logs.clone(),
        };
        baselines::catch_interrupts()?;
        let params = serde_json::json!({
            "scenario": s.name(),
            "agents": c.agents,
            "size": c.size,
            "rate": a.common.rate,
            "rate_bytes_per_s": rate_bytes,
            "tcp_share": TCP_SHARE,
            "chunking": scenarios::describe(&c.chunking),
            "upload_slots": c.upload_slots,
            "storage": format!("{:?}", c.storage).to_lowercase(),
            "seed": c.seed,
            "files": a.files,
            "kill_share": a.kill_share,
            "changed": a.changed,
            "version": shoal_version(),
        });
        let o = match scenarios::run(s, &c) {
            Ok(o) => o,
            Err(e) => {
                let mut v = params;
                v["error"] = e.clone().into();
                a.common.write_json(&v)?;
                return Err(format!("{}: {e}", s.name()));
            }
        };
        println!(
            "\nScenario {}: 1 seed -> {} hosts, {} MiB, {} links, {} chunks; ideal {:.1} s \
             ({})",
            o.scenario,
            o.hosts,
            o.size >> 20,
            a.common.rate,
            scenarios::describe(&c.chunking),
            o.ideal_s,
            o.ideal_is
        );
        println!(
            "Seed upload = the seed's eth0 tx (frames) / size. CPU over the distribution; \
             RSS = VmHWM."
        );
        table(&[(o.scenario, &o.result)], o.size, o.ideal_s);
        println!();
        details(o.scenario, &o.result, o.size);
        for n in &o.notes {
            println!("  {n}");
        }
        let mut v = params;
        v["ideal_s"] = o.ideal_s.into();
        v["ideal_is"] = o.ideal_is.clone().into();
        v["result"] = o.result.json(o.size, o.ideal_s);
        v["scenario_extra"] = o.extra.clone();
        a.common.write_json(&v)?;
        if let Some(dir) = &a.common.plot_dir {
            scenario_plots(dir, a, &o)?;
        }
        Ok(())
    }

    fn scenario_plots(dir: &Path, a: &ScenarioArgs, o: &Outcome) -> Result<(), String> {
        let about = format!(
            "{}, {} hosts, {} MiB, {}",
            o.scenario,
            o.hosts,
            o.size >> 20,
            a.common.rate
        );
        host_plots(
            dir,
            o.scenario,
            &about,
            &o.result,
            o.size,
            &o.labels,
            o.upload_unit,
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

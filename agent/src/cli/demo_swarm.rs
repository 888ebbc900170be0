//! `shoal demo` (swarm): a seed and several agents on loopback, each with
//! its own identity from a throwaway CA, fetch a freshly published package
//! over mTLS; the demo shows progress, verifies every copy, and cleans up.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use shoal_proto::chunking::ChunkingSpec;
use shoal_proto::package::{CreateOptions, create_manifest, default_threads, verify_content};
use shoal_proto::pki::{CertificateAuthority, IssueRequest};
use shoal_proto::units::{Bytes, parse_size};
use shoal_proto::{PublisherKey, SignedManifest};

use super::demo::{io_err, sample_tree, step, work_dir};
use super::exit::{self, CliError};
use super::output::Output;
use crate::agent::Agent;
use crate::config::{AgentConfig, TlsPaths};
use crate::store::PackageState;

/// The demo gives up if the swarm has not finished by then.
const DEMO_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, clap::Args)]
pub struct SwarmDemoArgs {
    /// Agents fetching besides the seed.
    #[arg(long, default_value_t = 4)]
    pub agents: u32,
    /// Size of the sample disk image in the package.
    #[arg(long, default_value = "256MiB", value_parser = |s: &str| parse_size(s).map_err(|e| e.to_string()))]
    pub size: u64,
    /// Cap each agent's upload, e.g. 50MiB/s, to watch the swarm share the load.
    #[arg(long, value_parser = |s: &str| shoal_proto::units::parse_rate(s).map_err(|e| e.to_string()))]
    pub upload_rate: Option<u64>,
    /// Keep the demo's files here instead of a temporary directory.
    #[arg(long)]
    pub keep: Option<PathBuf>,
}

fn demo_err(e: impl std::fmt::Display) -> CliError {
    CliError::new(exit::SOFTWARE, anyhow::anyhow!("demo: {e}"))
}

pub fn run(a: SwarmDemoArgs, out: Output) -> Result<u8, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(demo_err)?
        .block_on(run_async(a, out))
}

async fn run_async(a: SwarmDemoArgs, out: Output) -> Result<u8, CliError> {
    let (base, _tmp) = work_dir(a.keep.as_deref())?;

    step(out, "creating a throwaway CA and a publisher key");
    let ca = CertificateAuthority::generate("shoal demo CA").map_err(demo_err)?;
    let pki = base.join("pki");
    std::fs::create_dir_all(&pki).map_err(io_err(&pki))?;
    std::fs::write(pki.join("ca.pem"), ca.cert_pem()).map_err(io_err(&pki))?;
    let publisher = PublisherKey::generate()?;

    let content = base.join("content");
    step(
        out,
        &format!(
            "writing sample content: 40 course files and a {} image",
            Bytes(a.size)
        ),
    );
    sample_tree(&content, a.size)?;
    step(
        out,
        "packaging demo/lab-b@1 (content-defined chunks) and signing it",
    );
    let opts = CreateOptions {
        name: "demo/lab-b".into(),
        version: "1".into(),
        chunking: ChunkingSpec::cdc(1 << 20).map_err(demo_err)?,
        publisher: publisher.public(),
        threads: default_threads(),
        created_unix_ms: None,
        labels: Default::default(),
    };
    let manifest = create_manifest(&content, &opts, &())?;
    let signed = SignedManifest::sign(&manifest, &publisher)?;

    let config = |id: &str| -> Result<AgentConfig, CliError> {
        let issued = ca
            .issue(&IssueRequest::agent(
                id,
                &["demo"],
                Duration::from_secs(86_400),
            ))
            .map_err(demo_err)?;
        let cert = pki.join(format!("{id}.pem"));
        let key = pki.join(format!("{id}.key"));
        std::fs::write(&cert, issued.cert_pem).map_err(io_err(&cert))?;
        std::fs::write(&key, issued.key_pem).map_err(io_err(&key))?;
        let mut c = AgentConfig::new(
            &base.join(id),
            TlsPaths {
                ca: pki.join("ca.pem"),
                cert,
                key,
            },
        );
        c.listen = ([127, 0, 0, 1], 0).into();
        c.mdns = false;
        c.trusted_publishers.insert(publisher.public());
        if let Some(r) = a.upload_rate {
            c.limits.upload_rate = r;
        }
        Ok(c)
    };

    step(
        out,
        &format!(
            "starting a seed and {} agents on loopback (mTLS, one identity each)",
            a.agents
        ),
    );
    let seed = Agent::start(config("seed")?).await.map_err(demo_err)?;
    seed.publish(&signed, &content).await.map_err(demo_err)?;
    let mut agents = Vec::new();
    for i in 1..=a.agents {
        agents.push(
            Agent::start(config(&format!("agent-{i}"))?)
                .await
                .map_err(demo_err)?,
        );
    }
    let addrs: Vec<String> = std::iter::once(&seed)
        .chain(&agents)
        .map(|ag| ag.listen_addr().to_string())
        .collect();
    for ag in std::iter::once(&seed).chain(&agents) {
        let own = ag.listen_addr().to_string();
        let others: Vec<String> = addrs.iter().filter(|x| **x != own).cloned().collect();
        crate::discovery::add_static_peers(&ag.context().peers, &others);
    }

    step(out, "every agent fetches demo/lab-b@1 from the swarm");
    let started = Instant::now();
    let mut pkgs = Vec::new();
    for ag in &agents {
        pkgs.push(ag.fetch("demo/lab-b@1").await.map_err(demo_err)?);
    }
    let multi = MultiProgress::with_draw_target(if out.json || out.quiet {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    });
    let style = ProgressStyle::with_template(
        "{prefix:>8} [{bar:30}] {percent:>3}% {bytes:>10} {bytes_per_sec:>12} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let bars: Vec<ProgressBar> = agents
        .iter()
        .map(|ag| {
            let b = multi.add(ProgressBar::new(manifest.total_size));
            b.set_style(style.clone());
            b.set_prefix(ag.context().identity.agent_id.clone());
            b
        })
        .collect();
    loop {
        let mut all = true;
        for ((ag, pkg), bar) in agents.iter().zip(&pkgs).zip(&bars) {
            let done = pkg.record().state == PackageState::Complete;
            all &= done;
            let peers = ag
                .transfers()
                .watch(&pkg.id)
                .map(|w| w.borrow().peers)
                .unwrap_or_default();
            bar.set_position(pkg.bytes_done());
            bar.set_message(if done {
                "done".to_owned()
            } else {
                format!("{peers} peers")
            });
        }
        if all {
            break;
        }
        if started.elapsed() > DEMO_TIMEOUT {
            return Err(demo_err(format!(
                "the swarm did not finish within {DEMO_TIMEOUT:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    for b in &bars {
        b.finish();
    }

    step(out, "verifying every copy against the signed manifest");
    let mut verified = 0;
    for (ag, pkg) in agents.iter().zip(&pkgs) {
        let path = ag.context().store.stable_path(&pkg.manifest);
        let m = pkg.manifest.clone();
        let report =
            tokio::task::spawn_blocking(move || verify_content(&m, &path, default_threads(), &()))
                .await
                .map_err(demo_err)??;
        if !report.is_ok() {
            return Err(demo_err(format!(
                "{}: copy does not verify: {:?}",
                ag.context().identity.agent_id,
                report.problems
            )));
        }
        verified += 1;
    }
    let seed_sent = seed.context().counters.sent.load(Ordering::Relaxed);
    let (from_peers, from_origin) = agents.iter().fold((0u64, 0u64), |(p, o), ag| {
        let c = &ag.context().counters;
        (
            p + c.received_from_peers.load(Ordering::Relaxed),
            o + c.received_from_origin.load(Ordering::Relaxed),
        )
    });
    let total = manifest.total_size * u64::from(a.agents);
    let copies = seed_sent as f64 / manifest.total_size.max(1) as f64;
    let p2p = from_peers as f64 / (from_peers + from_origin).max(1) as f64;
    if out.json {
        out.json(&json!({
            "ok": true, "agents": a.agents, "package_bytes": manifest.total_size,
            "seconds": secs, "aggregate_bytes_per_s": total as f64 / secs,
            "copies_verified": verified, "seed_upload_copies": copies, "p2p_fraction": p2p,
        }));
    } else {
        println!(
            "    {verified} copies verified; {} delivered in {secs:.1} s ({}/s across the swarm)",
            Bytes(total),
            Bytes((total as f64 / secs) as u64)
        );
        println!(
            "    the seed uploaded {copies:.2} copies; {:.0} % of the bytes came from peers, not the seed",
            p2p * 100.0
        );
    }
    for ag in agents {
        ag.shutdown().await;
    }
    seed.shutdown().await;
    if !out.json {
        println!(
            "demo complete{}",
            if a.keep.is_some() {
                ""
            } else {
                "; temporary files removed"
            }
        );
    }
    Ok(exit::OK)
}

//! `shoal demo`: self-contained tours on this machine, cleaned up after.
//!
//! `shoal demo package` generates a publisher key and sample course material, packages it with
//! fixed and content-defined chunking, verifies signature and content,
//! shows that one flipped byte is caught and named, and shows how much of
//! a new version CDC lets agents reuse.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::json;
use shoal_proto::chunking::ChunkingSpec;
use shoal_proto::package::{
    ContentProblem, CreateOptions, create_manifest, default_threads, verify_content,
};
use shoal_proto::units::Bytes;
use shoal_proto::{Manifest, PublisherKey, SignedManifest, TrustedKeys};

use super::bench::write_random_file;
use super::exit::{self, CliError};
use super::output::Output;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    #[command(subcommand)]
    pub which: Option<DemoKind>,
    #[command(flatten)]
    pub swarm: super::demo_swarm::SwarmDemoArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum DemoKind {
    /// A swarm on loopback: a seed and several agents fetch a package (the default).
    Swarm(super::demo_swarm::SwarmDemoArgs),
    /// Packages alone: keys, create, verify, a flipped byte caught, CDC reuse.
    Package(PackageDemoArgs),
}

#[derive(Debug, clap::Args)]
pub struct PackageDemoArgs {
    /// Keep the demo's files in this directory instead of a temporary one.
    #[arg(long)]
    pub keep: Option<PathBuf>,
    /// Size of the sample disk image.
    #[arg(long, default_value = "64MiB", value_parser = |s: &str| shoal_proto::units::parse_size(s).map_err(|e| e.to_string()))]
    pub image_size: u64,
}

/// Where a demo works: `keep` if given, else a temporary directory that is
/// removed when the returned guard drops.
pub(crate) fn work_dir(
    keep: Option<&Path>,
) -> Result<(PathBuf, Option<tempfile::TempDir>), CliError> {
    match keep {
        Some(d) => {
            fs::create_dir_all(d).map_err(io_err(d))?;
            Ok((d.to_owned(), None))
        }
        None => {
            let tmp = tempfile::Builder::new()
                .prefix("shoal-demo-")
                .tempdir()
                .map_err(|e| CliError::io(e, "creating a temporary directory"))?;
            Ok((tmp.path().to_owned(), Some(tmp)))
        }
    }
}

pub(crate) fn step(out: Output, text: &str) {
    if !out.json {
        println!("==> {text}");
    }
}

pub(crate) fn io_err(what: &Path) -> impl FnOnce(std::io::Error) -> CliError + '_ {
    move |e| CliError::io(e, format!("demo: {}", what.display()))
}

pub(crate) fn sample_tree(root: &Path, image_size: u64) -> Result<(), CliError> {
    let course = root.join("course/week3");
    fs::create_dir_all(&course).map_err(io_err(&course))?;
    for i in 0..40u32 {
        let p = course.join(format!("exercise-{i:02}.txt"));
        let body = format!("Exercise {i}\n").repeat(1 + (i as usize * 97) % 700);
        fs::write(&p, body).map_err(io_err(&p))?;
    }
    let img = root.join("image.bin");
    write_random_file(&img, image_size, b"shoal demo image").map_err(io_err(&img))?;
    #[cfg(unix)]
    {
        let l = root.join("course/latest");
        std::os::unix::fs::symlink("week3", &l).map_err(io_err(&l))?;
    }
    Ok(())
}

fn package(
    root: &Path,
    name: &str,
    spec: ChunkingSpec,
    key: &PublisherKey,
    out: Output,
) -> Result<(Manifest, SignedManifest), CliError> {
    let opts = CreateOptions {
        name: name.into(),
        version: "1".into(),
        chunking: spec,
        publisher: key.public(),
        threads: default_threads(),
        created_unix_ms: None,
        labels: BTreeMap::from([("origin".into(), "demo".into())]),
    };
    let total = shoal_proto::package::scan(root)
        .map(|es| es.iter().map(|e| e.entry.size()).sum())
        .unwrap_or(0);
    let bar = out.byte_bar(total, "hashing");
    let m = create_manifest(root, &opts, &bar)?;
    drop(bar);
    let signed = SignedManifest::sign(&m, key)?;
    Ok((m, signed))
}

pub fn run(a: DemoArgs, out: Output) -> Result<u8, CliError> {
    match a.which {
        None => super::demo_swarm::run(a.swarm, out),
        Some(DemoKind::Swarm(s)) => super::demo_swarm::run(s, out),
        Some(DemoKind::Package(p)) => run_package(p, out),
    }
}

fn run_package(a: PackageDemoArgs, out: Output) -> Result<u8, CliError> {
    let (base, _tmp) = work_dir(a.keep.as_deref())?;

    step(out, "generating a publisher key");
    let key = PublisherKey::generate()?;
    let trusted: TrustedKeys = [key.public()].into_iter().collect();
    if !out.json {
        println!("    key id {}", key.public().key_id());
    }

    let root = base.join("content");
    step(
        out,
        &format!(
            "writing sample content: 40 course files and a {} image",
            Bytes(a.image_size)
        ),
    );
    sample_tree(&root, a.image_size)?;

    let mut results = Vec::new();
    for (label, spec) in [
        ("fixed", ChunkingSpec::Fixed { size: 4 << 20 }),
        (
            "cdc",
            ChunkingSpec::Cdc {
                min: 256 << 10,
                avg: 1 << 20,
                max: 4 << 20,
            },
        ),
    ] {
        step(
            out,
            &format!("packaging demo/lab-b@1 with {label} chunking"),
        );
        let (m, signed) = package(&root, "demo/lab-b", spec, &key, out)?;
        let path = base.join(format!("lab-b-{label}.manifest"));
        fs::write(&path, signed.encode()).map_err(io_err(&path))?;
        let reread = super::pkg::read_signed(&path)?;
        let verified = reread.verify(&trusted)?;
        let report = verify_content(&verified.manifest, &root, default_threads(), &())?;
        if !report.is_ok() {
            return Err(CliError::new(
                exit::SOFTWARE,
                anyhow::anyhow!("fresh package failed to verify: {:?}", report.problems),
            ));
        }
        if !out.json {
            println!(
                "    content id {}  {} entries, {} chunks, {}; signature and content verified",
                verified.content_id.short(),
                m.files.len(),
                m.chunks.len(),
                Bytes(m.total_size)
            );
        }
        results.push(
            json!({"chunking": label, "content_id": verified.content_id, "chunks": m.chunks.len()}),
        );
    }

    step(out, "flipping one byte of image.bin and verifying again");
    let img = root.join("image.bin");
    let fixed_manifest = super::pkg::read_signed(&base.join("lab-b-fixed.manifest"))?
        .verify(&trusted)?
        .manifest;
    flip_byte(&img, a.image_size / 2)?;
    let report = verify_content(&fixed_manifest, &root, default_threads(), &())?;
    let caught = matches!(report.problems.as_slice(), [ContentProblem::ChunkMismatch { path, .. }] if path == "image.bin");
    if !out.json {
        for p in &report.problems {
            println!("    caught: {p}");
        }
    }
    flip_byte(&img, a.image_size / 2)?;
    if !caught {
        return Err(CliError::new(
            exit::SOFTWARE,
            anyhow::anyhow!(
                "the flipped byte was not reported as one bad chunk: {:?}",
                report.problems
            ),
        ));
    }

    step(
        out,
        "next version: 100 bytes inserted near the start of image.bin",
    );
    let shared = next_version_sharing(&root, &key, out)?;
    if !out.json {
        println!(
            "    chunks already held: cdc {:.1} % of the bytes, fixed {:.1} %",
            shared.0 * 100.0,
            shared.1 * 100.0
        );
        println!(
            "demo complete{}",
            if a.keep.is_some() {
                ""
            } else {
                "; temporary files removed"
            }
        );
    } else {
        out.json(&json!({
            "ok": true,
            "packages": results,
            "flipped_byte_caught": caught,
            "next_version_shared": {"cdc": shared.0, "fixed": shared.1},
        }));
    }
    Ok(exit::OK)
}

fn flip_byte(path: &Path, at: u64) -> Result<(), CliError> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at))
        .and_then(|_| f.read_exact(&mut b))
        .and_then(|()| f.seek(SeekFrom::Start(at)))
        .and_then(|_| f.write_all(&[b[0] ^ 0x01]))
        .map_err(io_err(path))
}

/// Fraction of v2's bytes in chunks v1 already has, for (cdc, fixed).
fn next_version_sharing(
    root: &Path,
    key: &PublisherKey,
    out: Output,
) -> Result<(f64, f64), CliError> {
    let img = root.join("image.bin");
    let v2 = root.join("image-v2.bin");
    let data = fs::read(&img).map_err(io_err(&img))?;
    let cut = data.len().min(1000);
    let mut new = Vec::with_capacity(data.len() + 100);
    new.extend_from_slice(&data[..cut]);
    new.extend_from_slice(&[0x5a; 100]);
    new.extend_from_slice(&data[cut..]);
    drop(data);
    fs::write(&v2, &new).map_err(io_err(&v2))?;
    drop(new);
    let mut shares = Vec::new();
    for spec in [
        ChunkingSpec::Cdc {
            min: 256 << 10,
            avg: 1 << 20,
            max: 4 << 20,
        },
        ChunkingSpec::Fixed { size: 4 << 20 },
    ] {
        let (m1, _) = package(&img, "demo/image", spec, key, out)?;
        let (m2, _) = package(&v2, "demo/image", spec, key, out)?;
        let have: HashSet<_> = m1.chunks.iter().map(|c| c.hash).collect();
        let shared: u64 = m2
            .chunks
            .iter()
            .filter(|c| have.contains(&c.hash))
            .map(|c| u64::from(c.length))
            .sum();
        shares.push(shared as f64 / m2.total_size.max(1) as f64);
    }
    fs::remove_file(&v2).map_err(io_err(&v2))?;
    Ok((shares[0], shares[1]))
}

//! `shoal pkg`: create, verify and inspect signed packages.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Subcommand, ValueEnum};
use serde_json::json;
use shoal_proto::chunking::{ChunkingSpec, DEFAULT_CDC_AVG, DEFAULT_FIXED_SIZE};
use shoal_proto::manifest::EntryKind;
use shoal_proto::package::{CreateOptions, create_manifest, default_threads, verify_content};
use shoal_proto::units::{Bytes, parse_size};
use shoal_proto::{Manifest, PublisherKey, SignedManifest, TrustedKeys};

use super::exit::{self, CliError};
use super::key::{load_public, write_atomically};
use super::output::Output;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Chunking {
    /// Equal-size chunks (default 4 MiB).
    Fixed,
    /// Content-defined chunks (FastCDC; default average 1 MiB): the next
    /// version of a file shares most chunks with this one.
    Cdc,
}

#[derive(Debug, Subcommand)]
pub enum PkgCommand {
    /// Hash a file or directory into a signed manifest.
    Create(CreateArgs),
    /// Check a manifest's signature and, given the content, every chunk.
    Verify(VerifyArgs),
    /// Show what a manifest describes (does not check the signature).
    Inspect(InspectArgs),
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The file or directory to package.
    pub path: PathBuf,
    /// Package name, `[namespace/]name`.
    #[arg(long)]
    pub name: String,
    /// Package version.
    #[arg(long)]
    pub version: String,
    /// Publisher secret key (from `shoal key generate`).
    #[arg(long)]
    pub key: PathBuf,
    #[arg(long, value_enum, default_value_t = Chunking::Fixed)]
    pub chunking: Chunking,
    /// Fixed chunk size, e.g. 4MiB.
    #[arg(long, value_parser = parse_size_arg)]
    pub chunk_size: Option<u64>,
    /// CDC average chunk size, e.g. 1MiB.
    #[arg(long, value_parser = parse_size_arg)]
    pub avg_size: Option<u64>,
    /// Where to write the manifest [default: ./NAME@VERSION.manifest].
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    /// Overwrite an existing manifest file.
    #[arg(long)]
    pub force: bool,
    /// Label `key=value`; repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Creation time in Unix seconds [default: $SOURCE_DATE_EPOCH, else the
    /// newest modification time in the content, so the same content gives
    /// the same content id].
    #[arg(long)]
    pub created: Option<i64>,
    /// Hashing threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The signed manifest.
    pub manifest: PathBuf,
    /// The content to check: the package's directory, or the file of a
    /// one-file package. Without it only the signature is checked.
    pub content: Option<PathBuf>,
    /// A trusted publisher: `ed25519:<hex>`, a .pub file or a .key file;
    /// repeatable.
    #[arg(long = "trusted-key", required = true)]
    pub trusted_keys: Vec<String>,
    /// Hashing threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    pub manifest: PathBuf,
    /// List every file.
    #[arg(long)]
    pub files: bool,
    /// List every chunk.
    #[arg(long)]
    pub chunks: bool,
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("label {s:?} is not key=value"))
}

pub fn run(cmd: PkgCommand, out: Output) -> Result<u8, CliError> {
    match cmd {
        PkgCommand::Create(a) => create(a, out),
        PkgCommand::Verify(a) => verify(a, out),
        PkgCommand::Inspect(a) => inspect(a, out),
    }
}

/// The chunking the flags ask for.
pub fn chunking_from(
    kind: Chunking,
    chunk_size: Option<u64>,
    avg_size: Option<u64>,
) -> Result<ChunkingSpec, CliError> {
    let to_u32 = |v: u64, flag: &str| {
        u32::try_from(v).map_err(|_| CliError::usage(format!("{flag} {v} is too large")))
    };
    let spec = match kind {
        Chunking::Fixed => {
            if avg_size.is_some() {
                return Err(CliError::usage(
                    "--avg-size applies to --chunking cdc; use --chunk-size",
                ));
            }
            ChunkingSpec::fixed(to_u32(
                chunk_size.unwrap_or(u64::from(DEFAULT_FIXED_SIZE)),
                "--chunk-size",
            )?)
        }
        Chunking::Cdc => {
            if chunk_size.is_some() {
                return Err(CliError::usage(
                    "--chunk-size applies to --chunking fixed; use --avg-size",
                ));
            }
            ChunkingSpec::cdc(to_u32(
                avg_size.unwrap_or(u64::from(DEFAULT_CDC_AVG)),
                "--avg-size",
            )?)
        }
    };
    spec.map_err(CliError::usage)
}

fn describe_chunking(spec: &ChunkingSpec) -> String {
    match *spec {
        ChunkingSpec::Fixed { size } => format!("fixed {}", Bytes(u64::from(size))),
        ChunkingSpec::Cdc { min, avg, max } => format!(
            "cdc avg {} (min {}, max {})",
            Bytes(u64::from(avg)),
            Bytes(u64::from(min)),
            Bytes(u64::from(max))
        ),
    }
}

/// Default manifest file name: `NAME@VERSION.manifest`, '/' as '_'.
pub fn default_manifest_path(name: &str, version: &str) -> PathBuf {
    PathBuf::from(format!("{}@{version}.manifest", name.replace('/', "_")))
}

fn create(a: CreateArgs, out: Output) -> Result<u8, CliError> {
    let chunking = chunking_from(a.chunking, a.chunk_size, a.avg_size)?;
    let key = PublisherKey::load(&a.key)?;
    let created = match a.created {
        Some(s) => Some(s),
        None => match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(v) => Some(v.trim().parse::<i64>().map_err(|_| {
                CliError::usage(format!(
                    "SOURCE_DATE_EPOCH={v:?} is not a number of seconds"
                ))
            })?),
            Err(_) => None,
        },
    };
    let path = a
        .out
        .clone()
        .unwrap_or_else(|| default_manifest_path(&a.name, &a.version));
    if path.exists() && !a.force {
        return Err(CliError::new(
            exit::CANT_CREATE,
            anyhow::anyhow!("{} exists; pass --force to overwrite it", path.display()),
        ));
    }
    let opts = CreateOptions {
        name: a.name,
        version: a.version,
        chunking,
        publisher: key.public(),
        threads: a.threads.unwrap_or_else(default_threads).max(1),
        created_unix_ms: created.map(|s| s.saturating_mul(1000)),
        labels: a.labels.into_iter().collect::<BTreeMap<_, _>>(),
    };
    let total = scan_size(&a.path);
    let started = Instant::now();
    let manifest = {
        let bar = out.byte_bar(total, "hashing");
        create_manifest(&a.path, &opts, &bar)?
    };
    let secs = started.elapsed().as_secs_f64();
    let signed = SignedManifest::sign(&manifest, &key)?;
    write_atomically(&path, &signed.encode(), 0o644)?;
    let id = signed.content_id();
    if out.json {
        out.json(&json!({
            "ok": true,
            "name": manifest.name,
            "version": manifest.version,
            "content_id": id,
            "manifest_path": path,
            "total_size": manifest.total_size,
            "entries": manifest.files.len(),
            "chunks": manifest.chunks.len(),
            "chunking": manifest.chunking,
            "publisher_key_id": manifest.publisher_key_id,
            "created_unix_ms": manifest.created_unix_ms,
            "seconds": secs,
        }));
    } else {
        println!("created {}", manifest.name_version());
        print_summary(&manifest, &id.to_string());
        println!("  manifest    {}", path.display());
        println!(
            "  hashed      {} in {secs:.2} s ({}/s)",
            Bytes(manifest.total_size),
            Bytes((manifest.total_size as f64 / secs.max(1e-9)) as u64)
        );
    }
    Ok(exit::OK)
}

/// Total bytes under `path`, for the progress bar; 0 if it cannot be read
/// (the real scan then reports the error).
fn scan_size(path: &Path) -> u64 {
    shoal_proto::package::scan(path)
        .map(|es| es.iter().map(|e| e.entry.size()).sum())
        .unwrap_or(0)
}

fn print_summary(m: &Manifest, id: &str) {
    let (mut files, mut dirs, mut links) = (0, 0, 0);
    for f in &m.files {
        match f.kind {
            EntryKind::File { .. } => files += 1,
            EntryKind::Dir => dirs += 1,
            EntryKind::Symlink { .. } => links += 1,
        }
    }
    println!("  content id  {id}");
    println!(
        "  entries     {} ({files} files, {dirs} dirs, {links} symlinks), {}",
        m.files.len(),
        Bytes(m.total_size)
    );
    println!(
        "  chunks      {} ({})",
        m.chunks.len(),
        describe_chunking(&m.chunking)
    );
    println!("  publisher   {}", m.publisher_key_id);
    if !m.labels.is_empty() {
        let l: Vec<String> = m.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("  labels      {}", l.join(", "));
    }
}

/// Reads and parses a signed manifest file.
pub fn read_signed(path: &Path) -> Result<SignedManifest, CliError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| CliError::io(e, format!("reading manifest {}", path.display())))?;
    if meta.len() > (shoal_proto::manifest::MAX_MANIFEST_BYTES + 1024) as u64 {
        return Err(CliError::new(
            exit::DATA,
            anyhow::anyhow!(
                "{} is {} bytes: too large to be a manifest",
                path.display(),
                meta.len()
            ),
        ));
    }
    let bytes = std::fs::read(path)
        .map_err(|e| CliError::io(e, format!("reading manifest {}", path.display())))?;
    SignedManifest::decode(&bytes).map_err(|e| CliError::from(e).context(path.display()))
}

fn verify(a: VerifyArgs, out: Output) -> Result<u8, CliError> {
    let trusted: TrustedKeys = a
        .trusted_keys
        .iter()
        .map(|k| load_public(k))
        .collect::<Result<_, _>>()?;
    let signed = read_signed(&a.manifest)?;
    let id = signed.content_id();
    let verified = match signed.verify(&trusted) {
        Ok(v) => v,
        Err(e) => {
            let code = CliError::from(e);
            if out.json {
                out.json(&json!({
                    "ok": false,
                    "content_id": id,
                    "signature": format!("{:#}", code.error),
                }));
            } else {
                println!("{}: FAILED", a.manifest.display());
                println!("  signature   {:#}", code.error);
            }
            return Ok(code.code);
        }
    };
    let m = &verified.manifest;
    let report = match &a.content {
        None => None,
        Some(content) => {
            let bar = out.byte_bar(m.total_size, "checking");
            let threads = a.threads.unwrap_or_else(default_threads).max(1);
            Some(verify_content(m, content, threads, &bar)?)
        }
    };
    let ok = report.as_ref().is_none_or(|r| r.is_ok());
    if out.json {
        out.json(&json!({
            "ok": ok,
            "name": m.name,
            "version": m.version,
            "content_id": id,
            "signature": "ok",
            "publisher_key_id": m.publisher_key_id,
            "content": report,
        }));
    } else {
        println!(
            "{} {}: {}",
            m.name_version(),
            id.short(),
            if ok { "OK" } else { "FAILED" }
        );
        println!("  signature   ok (publisher {})", m.publisher_key_id);
        match &report {
            None => println!("  content     not checked (pass the content path to check it)"),
            Some(r) if r.is_ok() => println!(
                "  content     ok: {} entries, {} chunks, {} hashed",
                r.entries_checked,
                r.chunks_checked,
                Bytes(r.bytes_hashed)
            ),
            Some(r) => {
                println!("  content     {} problem(s):", r.problems.len());
                for p in r.problems.iter().take(50) {
                    println!("    {p}");
                }
                if r.problems.len() > 50 {
                    println!(
                        "    … and {} more (use --json for all)",
                        r.problems.len() - 50
                    );
                }
            }
        }
    }
    Ok(if ok { exit::OK } else { exit::FAILED })
}

fn inspect(a: InspectArgs, out: Output) -> Result<u8, CliError> {
    let signed = read_signed(&a.manifest)?;
    let m = signed
        .manifest_unverified()
        .map_err(|e| CliError::from(e).context(a.manifest.display()))?;
    let id = signed.content_id();
    if out.json {
        let mut v = json!({
            "name": m.name,
            "version": m.version,
            "content_id": id,
            "publisher_key_id": m.publisher_key_id,
            "signed_by": signed.key_id(),
            "signature_checked": false,
            "created_unix_ms": m.created_unix_ms,
            "total_size": m.total_size,
            "chunking": m.chunking,
            "labels": m.labels,
            "entry_count": m.files.len(),
            "chunk_count": m.chunks.len(),
        });
        if a.files {
            v["files"] = json!(m.files);
        }
        if a.chunks {
            v["chunks"] = m
                .chunks
                .iter()
                .map(|c| {
                    json!({"file": c.file, "offset": c.offset, "length": c.length, "hash": c.hash.to_hex().as_str()})
                })
                .collect();
        }
        out.json(&v);
        return Ok(exit::OK);
    }
    println!("{}", m.name_version());
    print_summary(&m, &id.to_string());
    println!("  created     {} (Unix ms)", m.created_unix_ms);
    println!(
        "  signature   by key {:?}, not checked (use `shoal pkg verify`)",
        signed.key_id()
    );
    if a.files {
        println!("  files:");
        for f in &m.files {
            let extra = match &f.kind {
                EntryKind::File { size } => format!("{size:>14}"),
                EntryKind::Dir => format!("{:>14}", "dir"),
                EntryKind::Symlink { target } => format!("{:>14} -> {target}", "symlink"),
            };
            println!("    {:04o} {extra}  {}", f.mode, f.path);
        }
    }
    if a.chunks {
        println!("  chunks:");
        for (i, c) in m.chunks.iter().enumerate() {
            let packed = match m.spans(i).count() {
                0 | 1 => String::new(),
                n => format!(" and {} more files packed with it", n - 1),
            };
            println!(
                "    {i:>6}  {}  {:>12} +{:<9} {}{packed}",
                &c.hash.to_hex()[..16],
                c.offset,
                c.length,
                m.files[c.file as usize].path
            );
        }
    }
    Ok(exit::OK)
}

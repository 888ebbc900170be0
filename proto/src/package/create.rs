//! Building a manifest from files on disk.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::scan::{ScanError, scan};
use crate::chunking::{ChunkingSpec, Progress, cut_stream, pipeline};
use crate::manifest::{ChunkRef, EntryKind, Manifest, ManifestError};
use crate::signing::PublicKey;

/// What to build.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub name: String,
    pub version: String,
    pub chunking: ChunkingSpec,
    pub publisher: PublicKey,
    /// Hashing threads.
    pub threads: usize,
    /// Creation time; `None` = the newest modification time in the tree,
    /// so that the same content gives the same content id on every run.
    pub created_unix_ms: Option<i64>,
    pub labels: BTreeMap<String, String>,
}

/// Why a package could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CreateError {
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: file changed while it was being hashed ({detail}); package a stable copy")]
    Changed { path: PathBuf, detail: String },
    #[error("the result is not a valid package: {0}")]
    Manifest(#[from] ManifestError),
}

/// Scans `root` and hashes every file, returning the unsigned manifest.
pub fn create_manifest(
    root: &Path,
    opts: &CreateOptions,
    progress: &dyn Progress,
) -> Result<Manifest, CreateError> {
    // Fail on a bad name before hashing gigabytes.
    crate::manifest::validate_name(&opts.name)?;
    crate::manifest::validate_version(&opts.version)?;
    let entries = scan(root)?;
    let files: Vec<(u32, &Path, u64)> = entries
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match e.entry.kind {
            EntryKind::File { size } if size > 0 => Some((i as u32, e.source.as_path(), size)),
            _ => None,
        })
        .collect();
    let spec = opts.chunking;

    // Fixed chunking packs files shorter than a chunk into shared chunks,
    // as many whole files as fit: a course of thousands of small files
    // then moves in about as many chunks as one file of the same size
    // (each chunk costs a request entry, a frame, a hash and a disk
    // operation on every host). Content-defined chunking keeps each file
    // apart, so that an edit moves only the chunks around it.
    let pack_below = match spec {
        ChunkingSpec::Fixed { size } => u64::from(size),
        ChunkingSpec::Cdc { .. } => 0,
    };
    let (layout, hashes) = pipeline::hash_pieces(opts.threads, progress, |sink| {
        let mut layout: Vec<(u32, u64, u32)> = Vec::new();
        let mut pack: Option<Pack> = None;
        for &(index, path, size) in &files {
            let io = |cause| CreateError::Io {
                path: path.to_owned(),
                cause,
            };
            let mut f = File::open(path).map_err(io)?;
            if size < pack_below {
                if pack.as_ref().is_some_and(|p| p.len + size > pack_below) {
                    Pack::flush(&mut pack, &mut layout, sink, root)?;
                }
                let p = pack.get_or_insert_with(|| {
                    let mut bytes = sink.buffer();
                    bytes.clear();
                    Pack {
                        first: index,
                        len: 0,
                        bytes,
                    }
                });
                let read = (&mut f).take(size).read_to_end(&mut p.bytes).map_err(io)? as u64;
                p.len += read;
                check_whole(&mut f, path, size, read)?;
                continue;
            }
            Pack::flush(&mut pack, &mut layout, sink, root)?;
            let read = cut_stream(&mut f, spec, size, sink, |off, len| {
                layout.push((index, off, len))
            })
            .map_err(io)?;
            check_whole(&mut f, path, size, read)?;
        }
        Pack::flush(&mut pack, &mut layout, sink, root)?;
        Ok::<_, CreateError>(layout)
    })?;

    let chunks = layout
        .into_iter()
        .zip(hashes)
        .map(|((file, offset, length), hash)| ChunkRef {
            file,
            offset,
            length,
            hash,
        })
        .collect();
    let created = opts.created_unix_ms.unwrap_or_else(|| {
        entries
            .iter()
            .filter(|e| !matches!(e.entry.kind, EntryKind::Dir))
            .map(|e| e.mtime_ms)
            .max()
            .or_else(|| entries.iter().map(|e| e.mtime_ms).max())
            .unwrap_or(0)
    });
    let manifest = Manifest {
        name: opts.name.clone(),
        version: opts.version.clone(),
        created_unix_ms: created,
        publisher_key_id: opts.publisher.key_id().to_string(),
        chunking: spec,
        total_size: entries.iter().map(|e| e.entry.size()).sum(),
        files: entries.into_iter().map(|e| e.entry).collect(),
        chunks,
        labels: opts.labels.clone(),
    };
    manifest.validate()?;
    Ok(manifest)
}

/// Small files being packed into one chunk.
struct Pack {
    /// Manifest index of the first.
    first: u32,
    len: u64,
    bytes: Vec<u8>,
}

impl Pack {
    /// Ends the pack in `pack`, if any: its chunk joins the layout and its
    /// bytes go to be hashed.
    fn flush(
        pack: &mut Option<Pack>,
        layout: &mut Vec<(u32, u64, u32)>,
        sink: &mut pipeline::PieceSink,
        root: &Path,
    ) -> Result<(), CreateError> {
        if let Some(p) = pack.take() {
            // At most one chunk size long: only files that fit join.
            layout.push((p.first, 0, p.len as u32));
            sink.submit(p.bytes).map_err(|cause| CreateError::Io {
                path: root.to_owned(),
                cause,
            })?;
        }
        Ok(())
    }
}

/// Fails unless `read` bytes were all of `f`, which was `size` bytes
/// when scanned.
fn check_whole(f: &mut File, path: &Path, size: u64, read: u64) -> Result<(), CreateError> {
    if read != size {
        return Err(CreateError::Changed {
            path: path.to_owned(),
            detail: format!("expected {size} bytes, read {read}"),
        });
    }
    let grew = f.read(&mut [0u8; 1]).map_err(|cause| CreateError::Io {
        path: path.to_owned(),
        cause,
    })?;
    if grew != 0 {
        return Err(CreateError::Changed {
            path: path.to_owned(),
            detail: format!("grew past {size} bytes"),
        });
    }
    Ok(())
}

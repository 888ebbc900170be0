//! Checking content on disk against a manifest, chunk by chunk.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::chunking::{Progress, pipeline};
use crate::manifest::{EntryKind, Manifest};

/// One way the content differs from the manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum ContentProblem {
    Missing {
        path: String,
    },
    WrongKind {
        path: String,
        expected: &'static str,
        found: &'static str,
    },
    WrongSize {
        path: String,
        expected: u64,
        found: u64,
    },
    WrongTarget {
        path: String,
        expected: String,
        found: String,
    },
    ChunkMismatch {
        path: String,
        chunk: usize,
        offset: u64,
        length: u32,
    },
    Unexpected {
        path: String,
    },
}

impl std::fmt::Display for ContentProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing { path } => write!(f, "{path}: missing"),
            Self::WrongKind {
                path,
                expected,
                found,
            } => {
                write!(f, "{path}: is a {found}, the manifest says {expected}")
            }
            Self::WrongSize {
                path,
                expected,
                found,
            } => {
                write!(f, "{path}: is {found} bytes, the manifest says {expected}")
            }
            Self::WrongTarget {
                path,
                expected,
                found,
            } => {
                write!(
                    f,
                    "{path}: symlink points to {found:?}, the manifest says {expected:?}"
                )
            }
            Self::ChunkMismatch {
                path,
                chunk,
                offset,
                length,
            } => write!(
                f,
                "{path}: bytes {offset}..{} differ from chunk {chunk}'s hash",
                offset + u64::from(*length)
            ),
            Self::Unexpected { path } => write!(f, "{path}: not part of the package"),
        }
    }
}

/// What a content check found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ContentReport {
    pub entries_checked: usize,
    pub chunks_checked: usize,
    pub bytes_hashed: u64,
    pub problems: Vec<ContentProblem>,
}

impl ContentReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A check that could not run to the end.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyContentError {
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: changed while it was being checked")]
    Changed { path: PathBuf },
}

/// Compares the tree at `root` with `manifest`: every entry's kind, size
/// and symlink target, every chunk's BLAKE3 hash, and no extra entries.
/// A one-file package may be checked against the file itself.
pub fn verify_content(
    manifest: &Manifest,
    root: &Path,
    threads: usize,
    progress: &dyn Progress,
) -> Result<ContentReport, VerifyContentError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |cause| VerifyContentError::Io { path, cause }
    };
    let root_meta = std::fs::metadata(root).map_err(io(root))?;
    let single_file = root_meta.is_file();
    let locate = |p: &str| -> PathBuf {
        if single_file {
            root.to_owned()
        } else {
            root.join(p)
        }
    };
    let mut report = ContentReport::default();

    if single_file
        && !(manifest.files.len() == 1 && matches!(manifest.files[0].kind, EntryKind::File { .. }))
    {
        report.problems.push(ContentProblem::WrongKind {
            path: root.display().to_string(),
            expected: "directory (the package has several entries)",
            found: "file",
        });
        return Ok(report);
    }

    // Entry-level checks; files that pass are hashed below.
    let mut hash_files: HashSet<usize> = HashSet::new();
    for (i, f) in manifest.files.iter().enumerate() {
        report.entries_checked += 1;
        let path = locate(&f.path);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                report.problems.push(ContentProblem::Missing {
                    path: f.path.clone(),
                });
                continue;
            }
            Err(e) => return Err(io(&path)(e)),
        };
        let ft = meta.file_type();
        let found = if ft.is_file() {
            "file"
        } else if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else {
            "special file"
        };
        if found != f.kind.name() {
            report.problems.push(ContentProblem::WrongKind {
                path: f.path.clone(),
                expected: f.kind.name(),
                found,
            });
            continue;
        }
        match &f.kind {
            EntryKind::File { size } if meta.len() != *size => {
                report.problems.push(ContentProblem::WrongSize {
                    path: f.path.clone(),
                    expected: *size,
                    found: meta.len(),
                });
            }
            EntryKind::File { .. } => {
                hash_files.insert(i);
            }
            EntryKind::Symlink { target } => {
                let actual = std::fs::read_link(&path).map_err(io(&path))?;
                let actual = actual.to_string_lossy().into_owned();
                if &actual != target {
                    report.problems.push(ContentProblem::WrongTarget {
                        path: f.path.clone(),
                        expected: target.clone(),
                        found: actual,
                    });
                }
            }
            EntryKind::Dir => {}
        }
    }

    if !single_file {
        let known: HashSet<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
        for item in walkdir::WalkDir::new(root).min_depth(1).follow_links(false) {
            let item = item.map_err(|e| VerifyContentError::Io {
                path: e.path().unwrap_or(root).to_owned(),
                cause: e
                    .into_io_error()
                    .unwrap_or_else(|| std::io::Error::other("file system loop")),
            })?;
            let rel = item
                .path()
                .strip_prefix(root)
                .map(|r| {
                    r.components()
                        .map(|c| c.as_os_str().to_string_lossy())
                        .collect::<Vec<_>>()
                        .join("/")
                })
                .unwrap_or_default();
            if !known.contains(rel.as_str()) {
                report
                    .problems
                    .push(ContentProblem::Unexpected { path: rel });
            }
        }
    }

    // Hash the chunks whose files all matched in size, in manifest order:
    // each file is read once, front to back (a packed chunk holds whole
    // files, so no file is split between a packed chunk and others).
    let jobs: Vec<usize> = (0..manifest.chunks.len())
        .filter(|&c| {
            manifest
                .spans(c)
                .all(|s| hash_files.contains(&(s.file as usize)))
        })
        .collect();
    let (_, hashes) = pipeline::hash_pieces(threads, progress, |sink| {
        let mut open: Option<(u32, File, PathBuf)> = None;
        for &c in &jobs {
            let mut buf = sink.buffer();
            buf.clear();
            for span in manifest.spans(c) {
                if open.as_ref().is_none_or(|(f, _, _)| *f != span.file) {
                    let path = locate(&manifest.files[span.file as usize].path);
                    let file = File::open(&path).map_err(io(&path))?;
                    open = Some((span.file, file, path));
                }
                let Some((_, file, path)) = open.as_mut() else {
                    unreachable!("opened above")
                };
                let n = file
                    .take(u64::from(span.len))
                    .read_to_end(&mut buf)
                    .map_err(io(path))?;
                if n != span.len as usize {
                    return Err(VerifyContentError::Changed { path: path.clone() });
                }
            }
            sink.submit(buf).map_err(io(root))?;
        }
        Ok(())
    })?;
    for (&c, hash) in jobs.iter().zip(&hashes) {
        let chunk = &manifest.chunks[c];
        report.chunks_checked += 1;
        report.bytes_hashed += u64::from(chunk.length);
        if *hash != chunk.hash {
            report.problems.push(ContentProblem::ChunkMismatch {
                path: chunk_files(manifest, c),
                chunk: c,
                offset: chunk.offset,
                length: chunk.length,
            });
        }
    }
    Ok(report)
}

/// The file a chunk lies in, or for a packed chunk its first file and how
/// many more it holds (one of them does not match; which, the chunk's hash
/// cannot tell).
fn chunk_files(manifest: &Manifest, chunk: usize) -> String {
    let mut spans = manifest.spans(chunk);
    let first = spans
        .next()
        .map(|s| manifest.files[s.file as usize].path.clone())
        .unwrap_or_default();
    match spans.count() {
        0 => first,
        more => format!("{first} (and {more} more files packed with it)"),
    }
}

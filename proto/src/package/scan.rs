//! Walking a file or directory into manifest entries.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use crate::manifest::{EntryKind, FileEntry};

/// One entry found on disk, with where it came from.
#[derive(Debug, Clone)]
pub struct ScannedEntry {
    pub entry: FileEntry,
    pub source: PathBuf,
    /// Modification time, milliseconds since the Unix epoch.
    pub mtime_ms: i64,
}

/// Why a tree could not be scanned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScanError {
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: file name is not valid UTF-8; rename it to package it")]
    NonUtf8 { path: PathBuf },
    #[error("{path}: {what} cannot be packaged (only files, directories and symlinks)")]
    Unsupported { path: PathBuf, what: &'static str },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ScanError + '_ {
    move |cause| ScanError::Io {
        path: path.to_owned(),
        cause,
    }
}

/// Scans `root`: a regular file becomes a one-file package named after the
/// file; a directory becomes its tree (root itself excluded), sorted by
/// path bytes as manifests require. Symlinks are recorded, never followed.
pub fn scan(root: &Path) -> Result<Vec<ScannedEntry>, ScanError> {
    let meta = std::fs::metadata(root).map_err(io(root))?;
    if meta.is_file() {
        let name = root
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| ScanError::NonUtf8 {
                path: root.to_owned(),
            })?;
        return Ok(vec![entry_for(root, name.to_owned(), &meta)?]);
    }
    if !meta.is_dir() {
        return Err(ScanError::Unsupported {
            path: root.to_owned(),
            what: "a special file",
        });
    }
    let mut out = Vec::new();
    for item in walkdir::WalkDir::new(root).min_depth(1).follow_links(false) {
        let item = item.map_err(|e| {
            let path = e.path().unwrap_or(root).to_owned();
            ScanError::Io {
                path,
                cause: e
                    .into_io_error()
                    .unwrap_or_else(|| std::io::Error::other("file system loop")),
            }
        })?;
        let rel = item
            .path()
            .strip_prefix(root)
            .map_err(|_| ScanError::NonUtf8 {
                path: item.path().to_owned(),
            })?;
        let mut parts = Vec::new();
        for c in rel.components() {
            parts.push(c.as_os_str().to_str().ok_or_else(|| ScanError::NonUtf8 {
                path: item.path().to_owned(),
            })?);
        }
        let meta = std::fs::symlink_metadata(item.path()).map_err(io(item.path()))?;
        out.push(entry_for(item.path(), parts.join("/"), &meta)?);
    }
    out.sort_by(|a, b| a.entry.path.as_bytes().cmp(b.entry.path.as_bytes()));
    Ok(out)
}

fn entry_for(
    path: &Path,
    rel: String,
    meta: &std::fs::Metadata,
) -> Result<ScannedEntry, ScanError> {
    let ft = meta.file_type();
    let kind = if ft.is_file() {
        EntryKind::File { size: meta.len() }
    } else if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_symlink() {
        let target = std::fs::read_link(path).map_err(io(path))?;
        let target = target.to_str().ok_or_else(|| ScanError::NonUtf8 {
            path: path.to_owned(),
        })?;
        EntryKind::Symlink {
            target: target.to_owned(),
        }
    } else {
        return Err(ScanError::Unsupported {
            path: path.to_owned(),
            what: "a socket, FIFO or device",
        });
    };
    let mtime_ms = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64);
    Ok(ScannedEntry {
        entry: FileEntry {
            path: rel,
            mode: mode_of(meta, &kind),
            kind,
        },
        source: path.to_owned(),
        mtime_ms,
    })
}

#[cfg(unix)]
fn mode_of(meta: &std::fs::Metadata, _kind: &EntryKind) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o777
}

#[cfg(not(unix))]
fn mode_of(meta: &std::fs::Metadata, kind: &EntryKind) -> u32 {
    match kind {
        EntryKind::Dir | EntryKind::Symlink { .. } => 0o755,
        EntryKind::File { .. } if meta.permissions().readonly() => 0o444,
        EntryKind::File { .. } => 0o644,
    }
}

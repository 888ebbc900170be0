//! The package manifest: domain types, canonical encoding and validation.
//!
//! A [`Manifest`] lists a package's files and the chunks that make up each
//! regular file. Its canonical bytes are prost's encoding of
//! [`pb::Manifest`](crate::pb::Manifest); [`Manifest::decode`] refuses bytes
//! that do not re-encode identically, so the content id (BLAKE3 of those
//! bytes) names exactly one manifest. Every manifest that leaves this module,
//! decoded or encoded, has passed [`Manifest::validate`].

mod error;
mod path;
mod validate;

use std::collections::BTreeMap;

use bytes::Bytes;
use prost::Message;

use crate::content_id::ContentId;
use crate::pb;

pub use error::ManifestError;
pub use path::{PathError, validate_rel_path};
pub use validate::{validate_name, validate_version};

/// The manifest format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Largest chunk a manifest may declare. Bounds the memory a receiver needs
/// per in-flight chunk.
pub const MAX_CHUNK_LEN: u32 = 64 << 20;
/// Largest encoded manifest accepted. A 10 TiB package in 1 MiB chunks is
/// about 500 MiB of table; 256 MiB covers every realistic package while
/// keeping a hostile manifest from exhausting memory.
pub const MAX_MANIFEST_BYTES: usize = 256 << 20;

/// How a package's files were cut into chunks. Informational: receivers
/// check the chunk table, they never re-chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ChunkingSpec {
    /// Every chunk `size` bytes except each file's last.
    Fixed { size: u32 },
    /// Content-defined (FastCDC 2020) with these bounds.
    Cdc { min: u32, avg: u32, max: u32 },
}

/// What a manifest entry is, with the fields only that kind has.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum EntryKind {
    File { size: u64 },
    Dir,
    Symlink { target: String },
}

impl EntryKind {
    pub fn name(&self) -> &'static str {
        match self {
            EntryKind::File { .. } => "file",
            EntryKind::Dir => "dir",
            EntryKind::Symlink { .. } => "symlink",
        }
    }
}

/// One file, directory or symlink of the package.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FileEntry {
    /// Relative, '/'-separated path.
    pub path: String,
    #[serde(flatten)]
    pub kind: EntryKind,
    /// Permission bits, at most 0o777.
    pub mode: u32,
}

impl FileEntry {
    pub fn size(&self) -> u64 {
        match self.kind {
            EntryKind::File { size } => size,
            _ => 0,
        }
    }
}

/// A run of bytes and its hash: part of one file, or (packed) whole
/// consecutive small files, starting with [`file`](Self::file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRef {
    /// Index into [`Manifest::files`] of the file the chunk starts in.
    pub file: u32,
    pub offset: u64,
    pub length: u32,
    pub hash: blake3::Hash,
}

/// The part of one file a chunk covers: see [`Manifest::spans`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Index into [`Manifest::files`].
    pub file: u32,
    /// Where in the file.
    pub offset: u64,
    pub len: u32,
    /// Where in the chunk.
    pub at: u32,
}

/// Iterator over a chunk's [`Span`]s, in order.
#[derive(Debug, Clone)]
pub struct Spans<'a> {
    files: &'a [FileEntry],
    next: usize,
    offset: u64,
    at: u32,
    left: u32,
}

impl Iterator for Spans<'_> {
    type Item = Span;

    fn next(&mut self) -> Option<Span> {
        while self.left > 0 {
            let f = self.files.get(self.next)?;
            let i = self.next;
            let offset = std::mem::take(&mut self.offset);
            self.next += 1;
            let avail = f.size().saturating_sub(offset);
            if avail == 0 {
                continue;
            }
            let len = avail.min(u64::from(self.left)) as u32;
            let at = self.at;
            self.at += len;
            self.left -= len;
            return Some(Span {
                file: i as u32,
                offset,
                len,
                at,
            });
        }
        None
    }
}

/// A package description. Construct it freely; [`Manifest::encode`] and
/// [`Manifest::decode`] validate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub created_unix_ms: i64,
    pub publisher_key_id: String,
    pub chunking: ChunkingSpec,
    pub total_size: u64,
    /// Sorted by path, byte order.
    pub files: Vec<FileEntry>,
    /// Sorted by (file, offset); together they tile every file's
    /// `[0, size)` in file order (see [`Manifest::spans`]).
    pub chunks: Vec<ChunkRef>,
    pub labels: BTreeMap<String, String>,
}

impl Manifest {
    /// `name@version`, the form people type.
    pub fn name_version(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// Validates, then returns the canonical bytes.
    pub fn encode(&self) -> Result<Bytes, ManifestError> {
        self.validate()?;
        Ok(Bytes::from(self.to_pb().encode_to_vec()))
    }

    /// Content id of this manifest (validates first).
    pub fn content_id(&self) -> Result<ContentId, ManifestError> {
        Ok(ContentId::of_manifest_bytes(&self.encode()?))
    }

    /// Parses canonical bytes: refuses malformed protobuf, non-canonical
    /// encodings and anything [`Manifest::validate`] refuses.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge { len: bytes.len() });
        }
        let pb = pb::Manifest::decode(bytes).map_err(ManifestError::Decode)?;
        let again = pb.encode_to_vec();
        if again != bytes {
            let at = again
                .iter()
                .zip(bytes)
                .position(|(a, b)| a != b)
                .unwrap_or(again.len().min(bytes.len()));
            return Err(ManifestError::NotCanonical { offset: at });
        }
        let m = Self::try_from(pb)?;
        m.validate()?;
        Ok(m)
    }

    /// Byte range of file `file` that chunk `index` covers, if it exists.
    pub fn chunk(&self, index: usize) -> Option<&ChunkRef> {
        self.chunks.get(index)
    }

    /// The files chunk `index` covers and where: one span, or one per file
    /// of a packed chunk. Empty when there is no such chunk. On a manifest
    /// that failed validation the spans may fall short of the chunk.
    pub fn spans(&self, index: usize) -> Spans<'_> {
        let (next, offset, left) = match self.chunks.get(index) {
            Some(c) => (c.file as usize, c.offset, c.length),
            None => (self.files.len(), 0, 0),
        };
        Spans {
            files: &self.files,
            next,
            offset,
            at: 0,
            left,
        }
    }

    fn to_pb(&self) -> pb::Manifest {
        pb::Manifest {
            format_version: FORMAT_VERSION,
            name: self.name.clone(),
            version: self.version.clone(),
            created_unix_ms: self.created_unix_ms,
            publisher_key_id: self.publisher_key_id.clone(),
            chunking: Some(match self.chunking {
                ChunkingSpec::Fixed { size } => pb::Chunking {
                    kind: pb::chunking::Kind::Fixed as i32,
                    min_size: 0,
                    avg_size: size,
                    max_size: 0,
                },
                ChunkingSpec::Cdc { min, avg, max } => pb::Chunking {
                    kind: pb::chunking::Kind::Cdc as i32,
                    min_size: min,
                    avg_size: avg,
                    max_size: max,
                },
            }),
            total_size: self.total_size,
            files: self
                .files
                .iter()
                .map(|f| {
                    let (kind, size, target) = match &f.kind {
                        EntryKind::File { size } => (pb::FileKind::File, *size, String::new()),
                        EntryKind::Dir => (pb::FileKind::Dir, 0, String::new()),
                        EntryKind::Symlink { target } => (pb::FileKind::Symlink, 0, target.clone()),
                    };
                    pb::FileEntry {
                        path: f.path.clone(),
                        kind: kind as i32,
                        size,
                        mode: f.mode,
                        symlink_target: target,
                    }
                })
                .collect(),
            chunks: self
                .chunks
                .iter()
                .map(|c| pb::Chunk {
                    file: c.file,
                    offset: c.offset,
                    length: c.length,
                    hash: Bytes::copy_from_slice(c.hash.as_bytes()),
                })
                .collect(),
            labels: self
                .labels
                .iter()
                .map(|(k, v)| pb::Label {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
        }
    }
}

impl TryFrom<pb::Manifest> for Manifest {
    type Error = ManifestError;

    /// Structural conversion: every field must map to exactly one domain
    /// value, so that converting back gives the same bytes. Semantic checks
    /// are [`Manifest::validate`]'s.
    fn try_from(pb: pb::Manifest) -> Result<Self, Self::Error> {
        if pb.format_version != FORMAT_VERSION {
            return Err(ManifestError::UnsupportedFormat {
                found: pb.format_version,
                supported: FORMAT_VERSION,
            });
        }
        let c = pb.chunking.ok_or(ManifestError::MissingChunking)?;
        let chunking = match pb::chunking::Kind::try_from(c.kind) {
            Ok(pb::chunking::Kind::Fixed) if c.min_size == 0 && c.max_size == 0 => {
                ChunkingSpec::Fixed { size: c.avg_size }
            }
            Ok(pb::chunking::Kind::Cdc) => ChunkingSpec::Cdc {
                min: c.min_size,
                avg: c.avg_size,
                max: c.max_size,
            },
            _ => {
                return Err(ManifestError::BadChunking {
                    reason: format!(
                        "kind {} with min {}, avg {}, max {} is not a known chunking",
                        c.kind, c.min_size, c.avg_size, c.max_size
                    ),
                });
            }
        };
        let mut files = Vec::with_capacity(pb.files.len());
        for (index, f) in pb.files.into_iter().enumerate() {
            let kind = match pb::FileKind::try_from(f.kind) {
                Ok(pb::FileKind::File) if f.symlink_target.is_empty() => {
                    EntryKind::File { size: f.size }
                }
                Ok(pb::FileKind::Dir) if f.size == 0 && f.symlink_target.is_empty() => {
                    EntryKind::Dir
                }
                Ok(pb::FileKind::Symlink) if f.size == 0 => EntryKind::Symlink {
                    target: f.symlink_target,
                },
                Ok(pb::FileKind::File | pb::FileKind::Dir | pb::FileKind::Symlink) => {
                    return Err(ManifestError::BadEntry {
                        index,
                        path: f.path,
                        reason: "only regular files have a size and only symlinks a target".into(),
                    });
                }
                _ => {
                    return Err(ManifestError::BadEntry {
                        index,
                        path: f.path,
                        reason: format!("unknown kind {}", f.kind),
                    });
                }
            };
            files.push(FileEntry {
                path: f.path,
                kind,
                mode: f.mode,
            });
        }
        let mut chunks = Vec::with_capacity(pb.chunks.len());
        for (index, c) in pb.chunks.into_iter().enumerate() {
            let hash: [u8; 32] =
                c.hash
                    .as_ref()
                    .try_into()
                    .map_err(|_| ManifestError::BadChunk {
                        index,
                        reason: format!("hash is {} bytes, BLAKE3 hashes are 32", c.hash.len()),
                    })?;
            chunks.push(ChunkRef {
                file: c.file,
                offset: c.offset,
                length: c.length,
                hash: blake3::Hash::from_bytes(hash),
            });
        }
        let mut labels = BTreeMap::new();
        let mut prev: Option<String> = None;
        for l in pb.labels {
            if prev.as_ref().is_some_and(|p| *p >= l.key) {
                return Err(ManifestError::BadLabel {
                    key: l.key,
                    reason: "labels must be sorted by key with no duplicates".into(),
                });
            }
            prev = Some(l.key.clone());
            labels.insert(l.key, l.value);
        }
        Ok(Manifest {
            name: pb.name,
            version: pb.version,
            created_unix_ms: pb.created_unix_ms,
            publisher_key_id: pb.publisher_key_id,
            chunking,
            total_size: pb.total_size,
            files,
            chunks,
            labels,
        })
    }
}

//! Why a manifest was refused, with where.

use super::path::PathError;

/// A manifest that cannot be accepted. Each variant says what is wrong and
/// where (entry or chunk index and path) so a publisher can fix it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    #[error("manifest is not valid protobuf (truncated or not a manifest): {0}")]
    Decode(prost::DecodeError),
    #[error(
        "manifest bytes are not in canonical encoding (first difference at byte {offset}); it was not produced by Shoal or was altered"
    )]
    NotCanonical { offset: usize },
    #[error(
        "manifest is {len} bytes; the limit is {} bytes",
        super::MAX_MANIFEST_BYTES
    )]
    TooLarge { len: usize },
    #[error(
        "manifest format version {found} is not supported (this build reads version {supported}); upgrade Shoal"
    )]
    UnsupportedFormat { found: u32, supported: u32 },
    #[error("manifest has no chunking description")]
    MissingChunking,
    #[error("chunking: {reason}")]
    BadChunking { reason: String },
    #[error("package name {name:?}: {reason}")]
    BadName { name: String, reason: String },
    #[error("package version {version:?}: {reason}")]
    BadVersion { version: String, reason: String },
    #[error("publisher key id {key_id:?} is not 16 lowercase hex digits")]
    BadKeyId { key_id: String },
    #[error("label {key:?}: {reason}")]
    BadLabel { key: String, reason: String },
    #[error("files[{index}] {path:?}: {reason}")]
    BadPath {
        index: usize,
        path: String,
        reason: PathError,
    },
    #[error("files[{index}] {path:?}: {reason}")]
    BadEntry {
        index: usize,
        path: String,
        reason: String,
    },
    #[error("files[{index}] {path:?}: duplicate of files[{first}]")]
    DuplicatePath {
        index: usize,
        path: String,
        first: usize,
    },
    #[error("files[{index}] {path:?}: out of order after {prev:?}; files must be sorted by path")]
    Unsorted {
        index: usize,
        path: String,
        prev: String,
    },
    #[error("files[{index}] {path:?}: parent {parent:?} is not a directory entry of the package")]
    MissingParent {
        index: usize,
        path: String,
        parent: String,
    },
    #[error(
        "files[{index}] {path:?}: mode {mode:#o} has bits beyond 0o777 (setuid, setgid or sticky are not allowed)"
    )]
    BadMode {
        index: usize,
        path: String,
        mode: u32,
    },
    #[error("files[{index}] {path:?}: symlink target {target:?} {reason}")]
    SymlinkEscapes {
        index: usize,
        path: String,
        target: String,
        reason: &'static str,
    },
    #[error("chunks[{index}]: {reason}")]
    BadChunk { index: usize, reason: String },
    #[error(
        "chunks[{index}] (file {path:?}): overlaps the previous chunk: starts at {offset}, previous ends at {expected}"
    )]
    ChunkOverlap {
        index: usize,
        path: String,
        offset: u64,
        expected: u64,
    },
    #[error(
        "chunks[{index}] (file {path:?}): gap before it: starts at {offset}, previous ends at {expected}"
    )]
    ChunkGap {
        index: usize,
        path: String,
        offset: u64,
        expected: u64,
    },
    #[error("chunks[{index}] (file {path:?}): ends at {end}, beyond the file's size {size}")]
    ChunkBeyondEnd {
        index: usize,
        path: String,
        end: u64,
        size: u64,
    },
    #[error("files[{index}] {path:?}: chunks cover {covered} of its {size} bytes")]
    FileNotCovered {
        index: usize,
        path: String,
        covered: u64,
        size: u64,
    },
    #[error("total size {declared} does not add up: the files hold {actual} bytes")]
    TotalSizeMismatch { declared: u64, actual: u64 },
}

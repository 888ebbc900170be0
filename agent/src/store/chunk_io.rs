//! Streaming chunk I/O: chunks move between the network and their files
//! in frame-sized pieces, so neither serving nor downloading holds a whole
//! chunk in memory.
//!
//! A [`ChunkWriter`] is the exclusive right to write one chunk's region:
//! pieces go to disk as they arrive while BLAKE3 runs over them, and the
//! chunk enters the bitfield only once the whole of it matches its hash.
//! Unverified bytes in a region the bitfield does not claim are never
//! served or trusted (a restart re-verifies), so writing them in place is
//! safe; the claim keeps two senders of the same chunk from interleaving.
//!
//! A [`ChunkReader`] hashes what it reads and holds back a chunk's last
//! piece until the whole chunk has matched, so a chunk rotted on disk ends
//! in an error rather than reaching the peer complete.
//!
//! Both open their file in the same blocking call as their first piece:
//! a chunk of a small file is one piece, and a hand-off to the blocking
//! pool per open as well as per piece doubled the thread wake-ups of a
//! package of thousands of small files.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use super::direct::{AlignedBuf, ContentFile};
use super::{Package, Store, StoreError, blocking, io_err};

/// Files shorter than this go through the page cache both ways. A direct
/// transfer of a few blocks costs a device round trip (on a VM, an exit to
/// the host) and, where the file's last block was written buffered, a
/// forced write-back before it can be read; a package of thousands of
/// small files paid that per file per peer. Their bytes are a small share
/// of such a package, so caching them costs little memory. Small chunks
/// of large files (content-defined chunking) stay direct.
pub const DIRECT_MIN: u32 = 64 << 10;

/// Writes one chunk in place; dropping it unfinished releases the claim
/// and leaves the chunk missing.
#[derive(Debug)]
pub struct ChunkWriter {
    claim: Claim,
    path: PathBuf,
    /// Opened with the first piece.
    file: Option<Arc<ContentFile>>,
    direct: bool,
    offset: u64,
    len: u32,
    written: u32,
    hasher: Option<Box<blake3::Hasher>>,
    /// Where direct writes are staged (aligned); reused piece to piece.
    scratch: Option<AlignedBuf>,
    expected: blake3::Hash,
}

/// How a finished [`ChunkWriter`] turned out.
#[derive(Debug, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// The chunk matched its hash and is now held.
    Stored,
    /// The bytes did not match the chunk's hash; nothing is held.
    Mismatch,
}

impl ChunkWriter {
    pub fn chunk(&self) -> u32 {
        self.claim.chunk
    }

    /// Bytes still expected.
    pub fn remaining(&self) -> u32 {
        self.len - self.written
    }

    /// Hashes `data` and writes it after what came before.
    pub async fn write(&mut self, data: Bytes) -> Result<(), StoreError> {
        if data.len() > self.remaining() as usize {
            return Err(StoreError::Internal(format!(
                "{} bytes for chunk {} with {} left",
                data.len(),
                self.chunk(),
                self.remaining()
            )));
        }
        let mut hasher = self
            .hasher
            .take()
            .ok_or_else(|| StoreError::Internal("chunk writer used after an error".into()))?;
        let mut scratch = match self.scratch.take() {
            Some(b) if b.capacity() >= data.len() => b,
            _ => AlignedBuf::new(data.len().max(super::direct::POOLED_LEN)),
        };
        let (file, path, direct) = (self.file.clone(), self.path.clone(), self.direct);
        let at = self.offset + u64::from(self.written);
        let n = data.len() as u32;
        let (hasher, scratch, file) = blocking(move || {
            let file = match file {
                Some(f) => f,
                None => Arc::new(ContentFile::open_write(&path, direct).map_err(io_err(&path))?),
            };
            hasher.update(&data);
            file.write_at(&data, at, &mut scratch)
                .map_err(io_err(&path))?;
            Ok((hasher, scratch, file))
        })
        .await?;
        self.hasher = Some(hasher);
        self.scratch = Some(scratch);
        self.file = Some(file);
        self.written += n;
        Ok(())
    }
}

/// The exclusive right to write one chunk; released on drop.
#[derive(Debug)]
struct Claim {
    pkg: Arc<Package>,
    chunk: u32,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.pkg.release_claim(self.chunk);
    }
}

/// Reads one held chunk piece by piece, verifying as it goes.
#[derive(Debug)]
pub struct ChunkReader {
    pkg: Arc<Package>,
    chunk: u32,
    path: PathBuf,
    file: Option<Arc<ContentFile>>,
    direct: bool,
    offset: u64,
    len: u32,
    read: u32,
    piece: u32,
    hasher: Option<Box<blake3::Hasher>>,
    expected: blake3::Hash,
}

impl ChunkReader {
    /// The next piece and its offset in the chunk, or `None` at the end.
    /// The last piece comes only after the whole chunk matched its hash.
    pub async fn next_piece(&mut self, store: &Store) -> Result<Option<(u32, Bytes)>, StoreError> {
        if self.read >= self.len {
            return Ok(None);
        }
        let at = self.read;
        let n = self.piece.min(self.len - at);
        let (path, file, direct) = (self.path.clone(), self.file.clone(), self.direct);
        let mut hasher = self
            .hasher
            .take()
            .ok_or_else(|| StoreError::Internal("chunk reader used after an error".into()))?;
        let offset = self.offset + u64::from(at);
        let last = at + n == self.len;
        let expected = self.expected;
        let (data, hasher, ok, file) = blocking(move || {
            let file = match file {
                Some(f) => f,
                None => Arc::new(ContentFile::open_read(&path, direct).map_err(io_err(&path))?),
            };
            let data = file.read_at(offset, n as usize).map_err(io_err(&path))?;
            hasher.update(&data);
            let ok = !last || hasher.finalize() == expected;
            Ok((data, hasher, ok, file))
        })
        .await?;
        if !ok {
            return Err(store.drop_corrupt(&self.pkg, self.chunk));
        }
        self.hasher = Some(hasher);
        self.file = Some(file);
        self.read += n;
        Ok(Some((at, data)))
    }
}

impl Store {
    /// Does `chunk` bypass the page cache? Where direct I/O is on, unless
    /// its file is shorter than [`DIRECT_MIN`].
    fn direct_for(&self, pkg: &Package, chunk: u32) -> bool {
        let small_file = pkg
            .manifest
            .chunks
            .get(chunk as usize)
            .and_then(|c| pkg.manifest.files.get(c.file as usize))
            .is_some_and(|f| f.size() < u64::from(DIRECT_MIN));
        self.direct_io() && !small_file
    }

    /// Claims `chunk` for writing in place. `None` when it is held already
    /// or another request is writing it.
    pub async fn begin_chunk(
        &self,
        pkg: &Arc<Package>,
        chunk: u32,
    ) -> Result<Option<ChunkWriter>, StoreError> {
        let (path, offset, len, expected) = pkg.chunk_location(chunk)?;
        if pkg.has_chunk(chunk) || !pkg.claim(chunk) {
            return Ok(None);
        }
        // Released on drop, so also if opening the file fails.
        let claim = Claim {
            pkg: pkg.clone(),
            chunk,
        };
        Ok(Some(ChunkWriter {
            claim,
            path,
            file: None,
            direct: self.direct_for(pkg, chunk),
            offset,
            len,
            written: 0,
            hasher: Some(Box::default()),
            scratch: None,
            expected,
        }))
    }

    /// Verifies a fully written chunk and, if it matches, records it held.
    pub async fn finish_chunk(&self, mut w: ChunkWriter) -> Result<ChunkOutcome, StoreError> {
        if w.written != w.len {
            return Err(StoreError::Internal(format!(
                "chunk {} finished with {} of {} bytes",
                w.chunk(),
                w.written,
                w.len
            )));
        }
        let hasher = w
            .hasher
            .take()
            .ok_or_else(|| StoreError::Internal("chunk writer used after an error".into()))?;
        if hasher.finalize() != w.expected {
            return Ok(ChunkOutcome::Mismatch);
        }
        self.record_chunk(&w.claim.pkg, w.claim.chunk)?;
        Ok(ChunkOutcome::Stored)
    }

    /// Opens a held chunk for serving in pieces of at most `piece` bytes.
    pub fn chunk_reader(
        &self,
        pkg: &Arc<Package>,
        chunk: u32,
        piece: u32,
    ) -> Result<ChunkReader, StoreError> {
        let (path, offset, len, expected) = pkg.chunk_location(chunk)?;
        if !pkg.has_chunk(chunk) {
            return Err(StoreError::NotHeld { chunk });
        }
        Ok(ChunkReader {
            pkg: pkg.clone(),
            chunk,
            path,
            file: None,
            direct: self.direct_for(pkg, chunk),
            offset,
            len,
            read: 0,
            piece: piece.max(1),
            hasher: Some(Box::default()),
            expected,
        })
    }
}

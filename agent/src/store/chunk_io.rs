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
//! A [`ChunkReader`] checks what it reads (against the CRC-32C recorded when
//! the chunk was verified, else its hash: see [`super::checksums`]) and
//! holds back a chunk's last piece until the whole chunk has matched, so a
//! chunk rotted on disk ends in an error rather than reaching the peer
//! complete.
//!
//! Both open a file in the same blocking call as the first piece that
//! touches it: a chunk of a small file is one piece, and a hand-off to the
//! blocking pool per open as well as per piece doubled the thread wake-ups
//! of a package of thousands of small files. A packed chunk (whole small
//! files sharing one chunk, see [`shoal_proto::manifest::Manifest::spans`])
//! is one [`Region`] per file; each file is closed once its region is done.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::checksums::{HashAndCrc, ReadCheck};
use super::direct::{ALIGN, AlignedBuf, ContentFile, Span, align_down};
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
    regions: Arc<[Region]>,
    /// The file of the region being written, opened with its first piece.
    open: Option<OpenFile>,
    len: u32,
    written: u32,
    /// The chunk's hash and CRC-32C so far; the CRC is recorded if the
    /// hash matches (see [`super::checksums`]).
    digests: Option<Box<HashAndCrc>>,
    /// Where direct writes are staged (aligned); reused piece to piece.
    scratch: Option<AlignedBuf>,
    /// The start of a block the last piece left incomplete.
    carry: Option<Carry>,
    expected: blake3::Hash,
}

/// The first bytes of a block inside a region, held back until the next
/// piece completes the block: written in two halves, it would go through
/// the page cache, and a later direct read of it would have to wait for
/// the kernel to write that page back (see [`super::direct`]).
#[derive(Debug)]
struct Carry {
    region: usize,
    /// File offset of the block (aligned).
    offset: u64,
    bytes: Vec<u8>,
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
        let mut digests = self
            .digests
            .take()
            .ok_or_else(|| StoreError::Internal("chunk writer used after an error".into()))?;
        let mut scratch = match self.scratch.take() {
            Some(b) if b.capacity() >= data.len() => b,
            _ => AlignedBuf::new(data.len().max(super::direct::POOLED_LEN)),
        };
        let (regions, mut open, mut carry) =
            (self.regions.clone(), self.open.take(), self.carry.take());
        let at = self.written;
        let n = data.len() as u32;
        let (digests, scratch, open, carry) = blocking(move || {
            digests.update(&data);
            for (r, (from, to)) in pieces(&regions, at, n) {
                let region = &regions[r];
                let file = open_region(&mut open, r, region, ContentFile::open_write)?;
                let bytes = &data[(from - at) as usize..(to - at) as usize];
                let offset = region.offset + u64::from(from - region.at);
                write_piece(file, (r, region), bytes, offset, &mut carry, &mut scratch)
                    .map_err(io_err(&region.path))?;
                if to == region.end() {
                    open = None;
                }
            }
            Ok((digests, scratch, open, carry))
        })
        .await?;
        self.digests = Some(digests);
        self.scratch = Some(scratch);
        self.open = open;
        self.carry = carry;
        self.written += n;
        Ok(())
    }
}

/// Writes bytes of region `r` at file `offset` onwards: first the block
/// `carry` started, if these bytes complete it; then all but a trailing
/// part block, which is held back in `carry` if the region goes on.
fn write_piece(
    file: &ContentFile,
    (r, region): (usize, &Region),
    mut bytes: &[u8],
    mut offset: u64,
    carry: &mut Option<Carry>,
    scratch: &mut AlignedBuf,
) -> std::io::Result<()> {
    let span = region.span();
    if let Some(mut c) = carry.take() {
        // Pieces come in order, so what a piece held back is continued by
        // the next one, in the same region.
        if c.region != r || c.offset + c.bytes.len() as u64 != offset {
            return Err(std::io::Error::other(
                "a held-back block is not continued by the next piece",
            ));
        }
        let need = (ALIGN - c.bytes.len()).min(bytes.len());
        c.bytes.extend_from_slice(&bytes[..need]);
        bytes = &bytes[need..];
        offset += need as u64;
        if c.bytes.len() < ALIGN && offset < span.end {
            *carry = Some(c);
            return Ok(());
        }
        file.write_at(&c.bytes, c.offset, &span, scratch)?;
    }
    let end = offset + bytes.len() as u64;
    let keep = align_down(end);
    if end < span.end && keep != end && keep >= offset && keep >= span.start {
        let split = (keep - offset) as usize;
        *carry = Some(Carry {
            region: r,
            offset: keep,
            bytes: bytes[split..].to_vec(),
        });
        bytes = &bytes[..split];
    }
    if bytes.is_empty() {
        return Ok(());
    }
    file.write_at(bytes, offset, &span, scratch)
}

/// One file's part of a chunk: all of a chunk but in a packed one.
#[derive(Debug)]
pub(super) struct Region {
    pub path: PathBuf,
    /// Where in the file.
    pub offset: u64,
    pub len: u32,
    /// Where in the chunk.
    pub at: u32,
    /// Bypasses the page cache (see [`DIRECT_MIN`]).
    pub direct: bool,
}

impl Region {
    fn end(&self) -> u32 {
        self.at + self.len
    }

    /// Where in its file (file offsets, end exclusive).
    fn span(&self) -> Span {
        self.offset..self.offset + u64::from(self.len)
    }
}

/// A region's file, open for the piece that continues it.
#[derive(Debug)]
struct OpenFile {
    region: usize,
    file: ContentFile,
}

/// The regions bytes `[at, at + n)` of a chunk touch, with the part of
/// each (chunk offsets, end exclusive).
fn pieces(regions: &[Region], at: u32, n: u32) -> impl Iterator<Item = (usize, (u32, u32))> + '_ {
    let end = at + n;
    regions
        .iter()
        .enumerate()
        .filter(move |(_, r)| r.at < end && r.end() > at)
        .map(move |(i, r)| (i, (r.at.max(at), r.end().min(end))))
}

/// Region `r`'s file: the open one if it is that region's, else opened.
fn open_region<'a>(
    open: &'a mut Option<OpenFile>,
    r: usize,
    region: &Region,
    how: fn(&std::path::Path, bool) -> std::io::Result<ContentFile>,
) -> Result<&'a ContentFile, StoreError> {
    if open.as_ref().is_none_or(|o| o.region != r) {
        let file = how(&region.path, region.direct).map_err(io_err(&region.path))?;
        *open = Some(OpenFile { region: r, file });
    }
    match open {
        Some(o) => Ok(&o.file),
        None => Err(StoreError::Internal("region file not open".into())),
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
    regions: Arc<[Region]>,
    open: Option<OpenFile>,
    len: u32,
    read: u32,
    piece: u32,
    check: Option<ReadCheck>,
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
        let mut check = self
            .check
            .take()
            .ok_or_else(|| StoreError::Internal("chunk reader used after an error".into()))?;
        let (regions, mut open) = (self.regions.clone(), self.open.take());
        let last = at + n == self.len;
        let (data, check, verdict, open) = blocking(move || {
            let parts: Vec<_> = pieces(&regions, at, n).collect();
            let mut out = BytesMut::with_capacity(if parts.len() > 1 { n as usize } else { 0 });
            let mut data = Bytes::new();
            for &(r, (from, to)) in &parts {
                let region = &regions[r];
                let file = open_region(&mut open, r, region, ContentFile::open_read)?;
                let offset = region.offset + u64::from(from - region.at);
                let len = (to - from) as usize;
                if parts.len() == 1 {
                    // The usual case: one file, no copy.
                    data = file
                        .read_at(offset, len, &region.span())
                        .map_err(io_err(&region.path))?;
                } else {
                    let start = out.len();
                    out.resize(start + len, 0);
                    file.read_exact_at(&mut out[start..], offset, &region.span())
                        .map_err(io_err(&region.path))?;
                }
                if to == region.end() {
                    open = None;
                }
            }
            if parts.len() > 1 {
                data = out.freeze();
            }
            if data.len() != n as usize {
                return Err(StoreError::Internal(format!(
                    "read {} of {n} bytes of a chunk",
                    data.len()
                )));
            }
            check.update(&data);
            let verdict = last.then(|| check.finish());
            Ok((data, check, verdict, open))
        })
        .await?;
        match verdict {
            Some((false, _)) => return Err(store.drop_corrupt(&self.pkg, self.chunk)),
            Some((true, Some(crc))) => self.pkg.checksums.set(self.chunk, crc),
            _ => {}
        }
        self.check = Some(check);
        self.open = open;
        self.read += n;
        Ok(Some((at, data)))
    }
}

/// Where `chunk` of `pkg` lives (one region per file), its length and its
/// hash. With `direct_io`, regions of files of [`DIRECT_MIN`] bytes or more
/// bypass the page cache.
pub(super) fn regions(
    pkg: &Package,
    chunk: u32,
    direct_io: bool,
) -> Result<(Arc<[Region]>, u32, blake3::Hash), StoreError> {
    let m = &pkg.manifest;
    let c = m.chunks.get(chunk as usize).ok_or(StoreError::OutOfRange {
        chunk,
        count: m.chunks.len() as u32,
    })?;
    let regions: Arc<[Region]> = m
        .spans(chunk as usize)
        .map(|s| {
            let file = s.file as usize;
            Region {
                path: super::files::entry_path(&pkg.root, pkg.root_is_file, m, file),
                offset: s.offset,
                len: s.len,
                at: s.at,
                direct: direct_io && m.files[file].size() >= u64::from(DIRECT_MIN),
            }
        })
        .collect();
    // A validated manifest's spans cover the chunk exactly.
    if regions.last().map_or(0, Region::end) != c.length {
        return Err(StoreError::Internal(format!(
            "chunk {chunk}'s files do not cover its {} bytes",
            c.length
        )));
    }
    Ok((regions, c.length, c.hash))
}

impl Store {
    /// Claims `chunk` for writing in place. `None` when it is held already
    /// or another request is writing it.
    pub async fn begin_chunk(
        &self,
        pkg: &Arc<Package>,
        chunk: u32,
    ) -> Result<Option<ChunkWriter>, StoreError> {
        let (regions, len, expected) = regions(pkg, chunk, self.direct_io())?;
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
            regions,
            open: None,
            len,
            written: 0,
            digests: Some(Box::default()),
            scratch: None,
            carry: None,
            expected,
        }))
    }

    /// Verifies a fully written chunk and, if it matches, records it held.
    pub async fn finish_chunk(&self, mut w: ChunkWriter) -> Result<ChunkOutcome, StoreError> {
        if w.written != w.len || w.carry.is_some() {
            return Err(StoreError::Internal(format!(
                "chunk {} finished with {} of {} bytes",
                w.chunk(),
                w.written,
                w.len
            )));
        }
        let digests = w
            .digests
            .take()
            .ok_or_else(|| StoreError::Internal("chunk writer used after an error".into()))?;
        if digests.hasher.finalize() != w.expected {
            return Ok(ChunkOutcome::Mismatch);
        }
        w.claim
            .pkg
            .checksums
            .set(w.claim.chunk, digests.crc.value());
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
        let (regions, len, expected) = regions(pkg, chunk, self.direct_io())?;
        if !pkg.has_chunk(chunk) {
            return Err(StoreError::NotHeld { chunk });
        }
        Ok(ChunkReader {
            pkg: pkg.clone(),
            chunk,
            regions,
            open: None,
            len,
            read: 0,
            piece: piece.max(1),
            check: Some(ReadCheck::new(pkg.checksums.get(chunk), expected)),
        })
    }
}

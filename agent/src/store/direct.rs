//! Chunk I/O that bypasses the page cache (`O_DIRECT`) where the file
//! system allows it, and falls back to ordinary buffered I/O where not.
//!
//! Package content is written once and read back only to serve peers, so
//! caching it buys little and costs a lot: every byte copied into a fresh
//! page-cache page, dirty pages written back later, and a desktop's working
//! set evicted by a 4 GiB image. Direct I/O moves the aligned middle of each
//! piece between the agent's own (reused) buffers and the device; the
//! unaligned edges, where a chunk starts or ends inside a block, go through
//! the page cache, which the kernel keeps coherent with direct I/O. Measured
//! here (a VM whose fresh pages are expensive): a buffered write cost about
//! 3 CPU-seconds per GB, a direct one 0.2.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

use bytes::Bytes;

use super::files;

/// Offsets, lengths and buffer addresses of direct I/O are multiples of
/// this (the largest logical block size in common use).
pub const ALIGN: usize = 4096;

fn align_down(x: u64) -> u64 {
    x & !(ALIGN as u64 - 1)
}

fn align_up(x: u64) -> u64 {
    align_down(x + ALIGN as u64 - 1)
}

/// A heap buffer whose usable part starts on an [`ALIGN`] boundary
/// (over-allocated, so no `unsafe` is needed). Buffers up to
/// [`POOLED_LEN`] come from a small pool and go back to it when dropped:
/// a fresh one per piece cost a zeroing pass and, once the allocator had
/// returned the memory, a page fault per 4 KiB (in the 30-agent swarm,
/// 8 % of the agents' CPU). A pooled buffer holds bytes of earlier pieces
/// of this agent's own files; only what a read filled is ever exposed.
#[derive(Debug)]
pub struct AlignedBuf {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

/// Pooled buffers hold this much: a frame and the partial blocks on both
/// sides of it.
pub const POOLED_LEN: usize = crate::swarm::service::FRAME_BYTES + 2 * ALIGN;

/// Buffers kept for reuse at most: about what the pieces in flight at
/// once need (upload slots × frames queued, plus writers).
const POOL_MAX: usize = 16;

static POOL: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

fn pool() -> std::sync::MutexGuard<'static, Vec<Vec<u8>>> {
    POOL.lock().unwrap_or_else(|p| p.into_inner())
}

impl AlignedBuf {
    pub fn new(len: usize) -> Self {
        let pooled = len <= POOLED_LEN;
        let buf = match pooled.then(|| pool().pop()).flatten() {
            Some(b) => b,
            None => vec![0u8; if pooled { POOLED_LEN } else { len } + ALIGN],
        };
        let start = buf.as_ptr().align_offset(ALIGN).min(ALIGN);
        Self { buf, start, len }
    }

    pub fn capacity(&self) -> usize {
        self.len
    }

    fn slice_mut(&mut self, len: usize) -> &mut [u8] {
        &mut self.buf[self.start..self.start + len]
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.buf.len() == POOLED_LEN + ALIGN {
            let mut pool = pool();
            if pool.len() < POOL_MAX {
                pool.push(std::mem::take(&mut self.buf));
            }
        }
    }
}

/// The bytes read into an [`AlignedBuf`], as the owner of a [`Bytes`].
#[derive(Debug)]
struct Filled(AlignedBuf);

impl AsRef<[u8]> for Filled {
    fn as_ref(&self) -> &[u8] {
        &self.0.buf[self.0.start..self.0.start + self.0.len]
    }
}

/// One content file, opened buffered and, where supported, also direct.
#[derive(Debug)]
pub struct ContentFile {
    buffered: File,
    direct: Option<File>,
}

#[cfg(target_os = "linux")]
fn open_direct(path: &Path, write: bool) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = OpenOptions::new();
    o.custom_flags(libc::O_DIRECT);
    if write {
        o.write(true);
    } else {
        o.read(true);
    }
    // EINVAL: the file system does not do direct I/O (tmpfs before 6.6,
    // some FUSE and network file systems). Buffered I/O serves then.
    o.open(path).ok()
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_path: &Path, _write: bool) -> Option<File> {
    None
}

/// A direct transfer the device refused (alignment it does not accept):
/// the caller repeats it buffered.
fn refused(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL)
}

impl ContentFile {
    /// Opens a content file for writing (made if missing, see
    /// [`files::prepare`]); `direct` asks for the
    /// page-cache bypass.
    pub fn open_write(path: &Path, direct: bool) -> io::Result<Self> {
        Ok(Self {
            buffered: files::open_for_write(path)?,
            direct: if direct {
                open_direct(path, true)
            } else {
                None
            },
        })
    }

    /// Opens a content file for reading.
    pub fn open_read(path: &Path, direct: bool) -> io::Result<Self> {
        Ok(Self {
            buffered: File::open(path)?,
            direct: if direct {
                open_direct(path, false)
            } else {
                None
            },
        })
    }

    /// Writes `data` at `offset`: the whole blocks inside it directly,
    /// through `scratch` (at least `data.len()` bytes), the partial blocks
    /// at its ends buffered.
    pub fn write_at(&self, data: &[u8], offset: u64, scratch: &mut AlignedBuf) -> io::Result<()> {
        let end = offset + data.len() as u64;
        let (a0, a1) = (align_up(offset), align_down(end));
        let Some(direct) = &self.direct else {
            return files::write_at(&self.buffered, data, offset);
        };
        if a1 <= a0 || (a1 - a0) as usize > scratch.capacity() {
            return files::write_at(&self.buffered, data, offset);
        }
        let (head, rest) = data.split_at((a0 - offset) as usize);
        let (middle, tail) = rest.split_at((a1 - a0) as usize);
        if !head.is_empty() {
            files::write_at(&self.buffered, head, offset)?;
        }
        let buf = scratch.slice_mut(middle.len());
        buf.copy_from_slice(middle);
        match files::write_at(direct, buf, a0) {
            Ok(()) => {}
            Err(e) if refused(&e) => files::write_at(&self.buffered, middle, a0)?,
            Err(e) => return Err(e),
        }
        if !tail.is_empty() {
            files::write_at(&self.buffered, tail, a1)?;
        }
        Ok(())
    }

    /// Fills `buf` from `offset`: buffered straight into it, direct
    /// through an aligned buffer.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if self.direct.is_some() {
            let data = self.read_at(offset, buf.len())?;
            buf.copy_from_slice(&data);
            return Ok(());
        }
        files::read_at(&self.buffered, buf, offset)
    }

    /// Reads `len` bytes at `offset`. Direct reads cover the enclosing
    /// blocks and hand out the part asked for without another copy.
    pub fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        if let Some(direct) = &self.direct {
            let (a0, a1) = (align_down(offset), align_up(offset + len as u64));
            let mut buf = AlignedBuf::new((a1 - a0) as usize);
            match read_direct(direct, &mut buf, a0) {
                Ok(n) if n >= (offset - a0) as usize + len => {
                    let skip = (offset - a0) as usize;
                    return Ok(Bytes::from_owner(Filled(buf)).slice(skip..skip + len));
                }
                Ok(_) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Err(e) if refused(&e) => {}
                Err(e) => return Err(e),
            }
        }
        let mut buf = vec![0u8; len];
        files::read_at(&self.buffered, &mut buf, offset)?;
        Ok(Bytes::from(buf))
    }
}

/// Fills `buf` from `offset` until it is full or the file ends; returns
/// the bytes read (short only at the end of the file).
#[cfg(unix)]
fn read_direct(file: &File, buf: &mut AlignedBuf, offset: u64) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let cap = buf.capacity();
    let dst = buf.slice_mut(cap);
    let mut done = 0;
    while done < cap {
        match file.read_at(&mut dst[done..], offset + done as u64) {
            Ok(0) => break,
            // A direct read stops short only at the end of the file, where
            // the next read returns 0.
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(not(unix))]
fn read_direct(_file: &File, _buf: &mut AlignedBuf, _offset: u64) -> io::Result<usize> {
    Err(io::Error::from_raw_os_error(libc::EINVAL))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn aligned_buffers_are_aligned() {
        for len in [1, 4096, 100_000] {
            let mut b = AlignedBuf::new(len);
            let p = b.slice_mut(len).as_ptr() as usize;
            assert_eq!(p % ALIGN, 0);
        }
    }

    /// Unaligned pieces at unaligned offsets, written direct where the
    /// file system allows, read back direct and buffered: same bytes.
    #[test]
    fn writes_and_reads_round_trip_at_any_alignment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let size = 3 * 1024 * 1024 + 777;
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(size as u64))
            .expect("create");
        let want = content(size);
        let mut scratch = AlignedBuf::new(600 * 1024);
        let w = ContentFile::open_write(&path, true).expect("open");
        // Pieces of awkward sizes, out of order.
        let mut cuts = vec![0usize, 1, 4095, 4097, 70_000, 600_000, 1_048_576, 2_000_001];
        cuts.push(size);
        let mut pieces: Vec<(usize, usize)> = cuts.windows(2).map(|p| (p[0], p[1])).collect();
        // The last piece is larger than the scratch buffer: buffered.
        pieces.reverse();
        for (a, b) in pieces {
            w.write_at(&want[a..b], a as u64, &mut scratch)
                .expect("write");
        }
        drop(w);
        for direct in [true, false] {
            let r = ContentFile::open_read(&path, direct).expect("open");
            for (off, len) in [
                (0, size),
                (1, 4096),
                (4095, 2),
                (size - 1, 1),
                (123_457, 524_288),
            ] {
                let got = r.read_at(off as u64, len).expect("read");
                assert_eq!(
                    &got[..],
                    &want[off..off + len],
                    "direct={direct} {off}+{len}"
                );
            }
            assert!(
                r.read_at(size as u64 - 10, 11).is_err(),
                "read past the end"
            );
        }
    }
}

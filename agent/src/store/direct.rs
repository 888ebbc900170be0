//! Chunk I/O that bypasses the page cache (`O_DIRECT`) where the file
//! system allows it, and falls back to ordinary buffered I/O where not.
//!
//! Package content is written once and read back only to serve peers, so
//! caching it buys little and costs a lot: every byte copied into a fresh
//! page-cache page, dirty pages written back later, and a desktop's working
//! set evicted by a 4 GiB image. Direct I/O moves whole blocks between the
//! agent's own (reused) buffers and the device. Measured here (a VM whose
//! fresh pages are expensive): a buffered write cost about 3 CPU-seconds
//! per GB, a direct one 0.2.
//!
//! A block lies either inside one region of a file (one chunk's part of
//! it: see `chunk_io`) or across a region's edge, where a chunk starts or
//! ends inside a block. Inside blocks always go direct, edge blocks always
//! through the page cache, both ways. So a direct transfer never meets a
//! dirty cached page: where one does, the kernel must first write that
//! page back and wait for it, which reading every small file of a course
//! package cost once per file per peer.
//!
//! A file is opened once, with `O_DIRECT` where the file system takes it;
//! the flag is switched off and on again (`fcntl`) around edge blocks,
//! which costs far less than a second open of the same path.

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

use bytes::Bytes;

use super::files;

/// Offsets, lengths and buffer addresses of direct I/O are multiples of
/// this (the largest logical block size in common use).
pub const ALIGN: usize = 4096;

pub fn align_down(x: u64) -> u64 {
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
        self.range_mut(0, len)
    }

    /// Bytes `from..to` of the usable part.
    fn range_mut(&mut self, from: usize, to: usize) -> &mut [u8] {
        &mut self.buf[self.start + from..self.start + to]
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

/// One content file, open once; direct where the file system allows.
#[derive(Debug)]
pub struct ContentFile {
    file: File,
    /// Direct I/O works on this file.
    direct_ok: Cell<bool>,
    /// `O_DIRECT` is set on the open file now.
    direct_now: Cell<bool>,
}

/// Where a file's region starts and ends (file offsets, end exclusive).
pub type Span = std::ops::Range<u64>;

/// The whole blocks inside `region`.
fn inside(region: &Span) -> (u64, u64) {
    (align_up(region.start), align_down(region.end))
}

#[cfg(target_os = "linux")]
fn open_direct(opts: &OpenOptions, path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = opts.clone();
    o.custom_flags(libc::O_DIRECT);
    o.open(path)
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_opts: &OpenOptions, _path: &Path) -> io::Result<File> {
    Err(io::Error::from_raw_os_error(libc::EINVAL))
}

/// A direct transfer the device or file system refused (alignment it does
/// not accept, no direct I/O at all): the caller repeats it buffered.
fn refused(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL)
}

impl ContentFile {
    fn open(opts: &OpenOptions, path: &Path, direct: bool) -> io::Result<Self> {
        if direct {
            match open_direct(opts, path) {
                Ok(file) => {
                    return Ok(Self {
                        file,
                        direct_ok: Cell::new(true),
                        direct_now: Cell::new(true),
                    });
                }
                // tmpfs before 6.6, some FUSE and network file systems.
                Err(e) if refused(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Self {
            file: opts.open(path)?,
            direct_ok: Cell::new(false),
            direct_now: Cell::new(false),
        })
    }

    /// Opens a content file for writing (made if missing, see
    /// [`files::prepare`]); `direct` asks for the page-cache bypass.
    pub fn open_write(path: &Path, direct: bool) -> io::Result<Self> {
        Self::open(&files::write_options(), path, direct)
    }

    /// Opens a content file for reading.
    pub fn open_read(path: &Path, direct: bool) -> io::Result<Self> {
        let mut o = OpenOptions::new();
        o.read(true);
        Self::open(&o, path, direct)
    }

    /// Turns `O_DIRECT` on or off for what follows; false when direct
    /// I/O was asked for and is not to be had.
    fn set_direct(&self, on: bool) -> bool {
        if on && !self.direct_ok.get() {
            return false;
        }
        if self.direct_now.get() == on {
            return true;
        }
        match set_o_direct(&self.file, on) {
            Ok(()) => {
                self.direct_now.set(on);
                true
            }
            Err(_) => {
                if on {
                    self.direct_ok.set(false);
                }
                false
            }
        }
    }

    /// Writes `data` at `offset`, inside `region` (the file's part of one
    /// chunk): whole blocks inside the region directly, through `scratch`
    /// (at least `data.len()` bytes), the rest through the page cache.
    pub fn write_at(
        &self,
        data: &[u8],
        offset: u64,
        region: &Span,
        scratch: &mut AlignedBuf,
    ) -> io::Result<()> {
        let end = offset + data.len() as u64;
        let (i0, i1) = inside(region);
        let (d0, d1) = (align_up(offset.max(i0)), align_down(end.min(i1)));
        if d1 <= d0 || (d1 - d0) as usize > scratch.capacity() || !self.direct_ok.get() {
            return self.write_buffered(data, offset);
        }
        let at = |x: u64| (x - offset) as usize;
        let (head, middle, tail) = (&data[..at(d0)], &data[at(d0)..at(d1)], &data[at(d1)..]);
        let buf = scratch.slice_mut(middle.len());
        buf.copy_from_slice(middle);
        if self.set_direct(true) {
            match files::write_at(&self.file, buf, d0) {
                Ok(()) => {}
                Err(e) if refused(&e) => {
                    self.direct_ok.set(false);
                    self.write_buffered(middle, d0)?;
                }
                Err(e) => return Err(e),
            }
        } else {
            self.write_buffered(middle, d0)?;
        }
        if !head.is_empty() {
            self.write_buffered(head, offset)?;
        }
        if !tail.is_empty() {
            self.write_buffered(tail, d1)?;
        }
        Ok(())
    }

    fn write_buffered(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.leave_direct()?;
        files::write_at(&self.file, data, offset)
    }

    fn read_buffered(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.leave_direct()?;
        files::read_at(&self.file, buf, offset)
    }

    fn leave_direct(&self) -> io::Result<()> {
        if self.direct_now.get() && !self.set_direct(false) {
            return Err(io::Error::other(
                "cannot turn direct I/O off on a content file",
            ));
        }
        Ok(())
    }

    /// Fills `buf` from `offset`, inside `region`, as [`Self::read_at`].
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64, region: &Span) -> io::Result<()> {
        if self.direct_ok.get() {
            let data = self.read_at(offset, buf.len(), region)?;
            buf.copy_from_slice(&data);
            return Ok(());
        }
        self.read_buffered(buf, offset)
    }

    /// Reads `len` bytes at `offset`, inside `region`: the region's whole
    /// blocks directly (reading all of each block touched, and handing
    /// out the part asked for without another copy), its edge blocks
    /// through the page cache.
    pub fn read_at(&self, offset: u64, len: usize, region: &Span) -> io::Result<Bytes> {
        let end = offset + len as u64;
        let (i0, i1) = inside(region);
        let (d0, d1) = (align_down(offset).max(i0), align_up(end).min(i1));
        if d1 > d0 && self.direct_ok.get() {
            let a0 = align_down(offset);
            let mut buf = AlignedBuf::new((align_up(end) - a0) as usize);
            if self.set_direct(true) {
                let filled = read_direct(
                    &self.file,
                    buf.range_mut((d0 - a0) as usize, (d1 - a0) as usize),
                    d0,
                );
                match filled {
                    Ok(n) if n == (d1 - d0) as usize => {
                        if offset < d0 {
                            let part = buf.range_mut((offset - a0) as usize, (d0 - a0) as usize);
                            self.read_buffered(part, offset)?;
                        }
                        if d1 < end {
                            let part = buf.range_mut((d1 - a0) as usize, (end - a0) as usize);
                            self.read_buffered(part, d1)?;
                        }
                        let skip = (offset - a0) as usize;
                        return Ok(Bytes::from_owner(Filled(buf)).slice(skip..skip + len));
                    }
                    Ok(_) => return Err(io::ErrorKind::UnexpectedEof.into()),
                    Err(e) if refused(&e) => self.direct_ok.set(false),
                    Err(e) => return Err(e),
                }
            }
        }
        let mut buf = vec![0u8; len];
        self.read_buffered(&mut buf, offset)?;
        Ok(Bytes::from(buf))
    }
}

#[cfg(target_os = "linux")]
fn set_o_direct(file: &File, on: bool) -> io::Result<()> {
    use rustix::fs::{OFlags, fcntl_getfl, fcntl_setfl};
    let mut flags = fcntl_getfl(file)?;
    flags.set(OFlags::DIRECT, on);
    fcntl_setfl(file, flags)?;
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn set_o_direct(_file: &File, on: bool) -> io::Result<()> {
    if on {
        Err(io::Error::from_raw_os_error(libc::EINVAL))
    } else {
        Ok(())
    }
}

/// Fills `dst` (aligned) from `offset` until it is full or the file ends;
/// returns the bytes read (short only at the end of the file).
#[cfg(unix)]
fn read_direct(file: &File, dst: &mut [u8], offset: u64) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut done = 0;
    while done < dst.len() {
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
fn read_direct(_file: &File, _dst: &mut [u8], _offset: u64) -> io::Result<usize> {
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

    /// Unaligned pieces at unaligned offsets, each its own region (as
    /// chunks of content-defined chunking are), written direct where the
    /// file system allows, read back direct and buffered, whole or region
    /// by region: same bytes.
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
        for &(a, b) in &pieces {
            let region = a as u64..b as u64;
            w.write_at(&want[a..b], a as u64, &region, &mut scratch)
                .expect("write");
        }
        drop(w);
        let whole = 0..size as u64;
        for direct in [true, false] {
            let r = ContentFile::open_read(&path, direct).expect("open");
            for (off, len) in [
                (0, size),
                (1, 4096),
                (4095, 2),
                (size - 1, 1),
                (123_457, 524_288),
            ] {
                let got = r.read_at(off as u64, len, &whole).expect("read");
                assert_eq!(
                    &got[..],
                    &want[off..off + len],
                    "direct={direct} {off}+{len}"
                );
            }
            for &(a, b) in &pieces {
                let got = r.read_at(a as u64, b - a, &(a as u64..b as u64));
                assert_eq!(&got.expect("read")[..], &want[a..b], "region {a}..{b}");
            }
            let mut buf = vec![0u8; 5000];
            r.read_exact_at(&mut buf, 4000, &whole).expect("read");
            assert_eq!(buf, &want[4000..9000]);
            assert!(
                r.read_at(size as u64 - 10, 11, &whole).is_err(),
                "read past the end"
            );
        }
    }
}

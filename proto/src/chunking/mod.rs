//! Cutting files into chunks and hashing them on every core.
//!
//! Two chunkings produce valid manifests: fixed-size (default 4 MiB) and
//! content-defined (FastCDC 2020, default average 1 MiB, bounds avg/4 and
//! 4×avg), where an insertion moves only the chunks around it. Hashing runs
//! in [`pipeline`]: one reader streams pieces through a bounded queue to a
//! pool of BLAKE3 workers, so memory stays at a few chunks whatever the
//! package size.

pub(crate) mod pipeline;

use std::io::Read;

pub use crate::manifest::ChunkingSpec;

/// Default fixed chunk size: large enough that per-chunk overhead vanishes
/// on a LAN, small enough that a lost chunk costs little to refetch.
pub const DEFAULT_FIXED_SIZE: u32 = 4 << 20;
/// Default CDC average chunk size.
pub const DEFAULT_CDC_AVG: u32 = 1 << 20;
/// Smallest fixed chunk size accepted when creating packages.
pub const MIN_FIXED_SIZE: u32 = 4 << 10;
/// Largest fixed chunk size accepted when creating packages.
pub const MAX_FIXED_SIZE: u32 = crate::manifest::MAX_CHUNK_LEN;
/// FastCDC 2020's bounds on the average size.
pub const MIN_CDC_AVG: u32 = 1 << 10;
pub const MAX_CDC_AVG: u32 = fastcdc::v2020::AVERAGE_MAX as u32;

/// A chunking that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidChunking(String);

impl ChunkingSpec {
    /// Fixed-size chunks of `size` bytes.
    pub fn fixed(size: u32) -> Result<Self, InvalidChunking> {
        if !(MIN_FIXED_SIZE..=MAX_FIXED_SIZE).contains(&size) {
            return Err(InvalidChunking(format!(
                "fixed chunk size {size} must be between {MIN_FIXED_SIZE} and {MAX_FIXED_SIZE} bytes"
            )));
        }
        Ok(Self::Fixed { size })
    }

    /// Content-defined chunks averaging `avg` bytes (min avg/4, max 4×avg).
    pub fn cdc(avg: u32) -> Result<Self, InvalidChunking> {
        if !(MIN_CDC_AVG..=MAX_CDC_AVG).contains(&avg) || !avg.is_multiple_of(4) {
            return Err(InvalidChunking(format!(
                "CDC average size {avg} must be a multiple of 4 between {MIN_CDC_AVG} and {MAX_CDC_AVG} bytes"
            )));
        }
        Ok(Self::Cdc {
            min: avg / 4,
            avg,
            max: avg * 4,
        })
    }

    /// Largest chunk this spec produces.
    pub fn max_chunk(&self) -> u32 {
        match *self {
            Self::Fixed { size } => size,
            Self::Cdc { max, .. } => max,
        }
    }
}

/// Receives hashing progress in bytes; called from worker threads.
pub trait Progress: Sync {
    fn advance(&self, bytes: u64);
}

impl Progress for () {
    fn advance(&self, _bytes: u64) {}
}

/// One chunk of a stream: where it is and what it hashes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkInfo {
    pub offset: u64,
    pub length: u32,
    pub hash: blake3::Hash,
}

/// Chunks a single stream with `spec`, hashing on `threads` threads.
/// Streams: memory is bounded by a few chunks whatever the input length.
pub fn chunk_stream<R: Read + Send>(
    reader: R,
    spec: ChunkingSpec,
    threads: usize,
    progress: &dyn Progress,
) -> std::io::Result<Vec<ChunkInfo>> {
    let (layout, hashes) = pipeline::hash_pieces(threads, progress, |sink| {
        let mut layout = Vec::new();
        let mut reader = reader;
        cut_stream(&mut reader, spec, u64::MAX, sink, |off, len| {
            layout.push((off, len))
        })?;
        Ok::<_, std::io::Error>(layout)
    })?;
    Ok(layout
        .into_iter()
        .zip(hashes)
        .map(|((offset, length), hash)| ChunkInfo {
            offset,
            length,
            hash,
        })
        .collect())
}

/// Reads up to `limit` bytes from `reader`, cuts them with `spec` and
/// submits each chunk to `sink`; `on_chunk(offset, length)` records the
/// layout in submission order. Returns the number of bytes read.
pub(crate) fn cut_stream<R: Read>(
    reader: &mut R,
    spec: ChunkingSpec,
    limit: u64,
    sink: &mut pipeline::PieceSink,
    mut on_chunk: impl FnMut(u64, u32),
) -> std::io::Result<u64> {
    let mut src = reader.take(limit);
    let mut total = 0u64;
    match spec {
        ChunkingSpec::Fixed { size } => loop {
            let mut buf = sink.buffer();
            buf.clear();
            let n = (&mut src).take(u64::from(size)).read_to_end(&mut buf)?;
            if n == 0 {
                break;
            }
            on_chunk(total, n as u32);
            total += n as u64;
            sink.submit(buf)?;
            if n < size as usize {
                break;
            }
        },
        ChunkingSpec::Cdc { min, avg, max } => {
            let cdc = fastcdc::v2020::StreamCDC::new(src, min as usize, avg as usize, max as usize);
            for chunk in cdc {
                let chunk = chunk.map_err(|e| match e {
                    fastcdc::v2020::Error::IoError(io) => io,
                    other => std::io::Error::other(other.to_string()),
                })?;
                on_chunk(chunk.offset, chunk.length as u32);
                total += chunk.length as u64;
                sink.submit(chunk.data)?;
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u8) -> Vec<u8> {
        let mut out = vec![0u8; len];
        let mut xof = blake3::Hasher::new().update(&[seed]).finalize_xof();
        xof.fill(&mut out);
        out
    }

    #[test]
    fn fixed_chunks_tile_the_stream() {
        let d = data(10 * 4096 + 17, 1);
        let spec = ChunkingSpec::fixed(4096).expect("valid");
        let chunks = chunk_stream(&d[..], spec, 3, &()).expect("chunks");
        assert_eq!(chunks.len(), 11);
        assert_eq!(chunks[10].length, 17);
        for c in &chunks {
            let s = &d[c.offset as usize..c.offset as usize + c.length as usize];
            assert_eq!(blake3::hash(s), c.hash);
        }
    }

    #[test]
    fn cdc_chunks_tile_and_respect_bounds() {
        let d = data(3 << 20, 2);
        let spec = ChunkingSpec::cdc(64 << 10).expect("valid");
        let chunks = chunk_stream(&d[..], spec, 2, &()).expect("chunks");
        let mut off = 0;
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(c.offset, off);
            assert!(c.length <= 256 << 10);
            if i + 1 < chunks.len() {
                assert!(c.length >= 16 << 10);
            }
            off += u64::from(c.length);
        }
        assert_eq!(off, d.len() as u64);
        // Same input, same chunks, whatever the thread count.
        assert_eq!(chunk_stream(&d[..], spec, 1, &()).expect("chunks"), chunks);
    }

    #[test]
    fn empty_stream_has_no_chunks() {
        for spec in [ChunkingSpec::fixed(4096), ChunkingSpec::cdc(4096)] {
            let chunks = chunk_stream(&b""[..], spec.expect("valid"), 2, &()).expect("chunks");
            assert!(chunks.is_empty());
        }
    }

    #[test]
    fn refuses_bad_specs() {
        assert!(ChunkingSpec::fixed(100).is_err());
        assert!(ChunkingSpec::fixed(u32::MAX).is_err());
        assert!(ChunkingSpec::cdc(8 << 20).is_err());
        assert!(ChunkingSpec::cdc(1022).is_err());
    }
}

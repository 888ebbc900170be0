//! Chunks a download takes from packages this agent already holds.
//!
//! A chunk is named by its BLAKE3 hash, so a chunk of the new package with
//! the same hash and length as a chunk held in another package (last
//! month's image, a course's previous term) is the same bytes. It is
//! copied on this host, and verified as it is written like any chunk from
//! the network, instead of being fetched: the next version of an image
//! costs the network only what changed. Chunks repeated inside the new
//! package itself (runs of zeroes) are copied once one copy is held.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::service::FRAME_BYTES;
use crate::store::{ChunkOutcome, Package, Store, StoreError};

/// What reuse achieved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reused {
    pub chunks: u32,
    pub bytes: u64,
}

/// Copies into `pkg` every missing chunk some held package (`pkg`
/// included) has under the same hash and length. A source chunk that
/// fails its hash on the way is dropped from its package (the reader sees
/// to that) and left for the network.
pub async fn reuse_held_chunks(
    store: &Store,
    pkg: &Arc<Package>,
    cancel: &CancellationToken,
) -> Result<Reused, StoreError> {
    let mut wanted: HashMap<([u8; 32], u32), Vec<u32>> = HashMap::new();
    for (i, c) in pkg.manifest.chunks.iter().enumerate() {
        let i = i as u32;
        if !pkg.has_chunk(i) {
            wanted
                .entry((*c.hash.as_bytes(), c.length))
                .or_default()
                .push(i);
        }
    }
    if wanted.is_empty() {
        return Ok(Reused::default());
    }
    // One held source per wanted hash; the new package's own held chunks
    // count too.
    let mut sources: Vec<(Arc<Package>, u32, Vec<u32>)> = Vec::new();
    let mut packages = store.list();
    packages.sort_by_key(|p| !Arc::ptr_eq(p, pkg));
    for src in packages {
        for (i, c) in src.manifest.chunks.iter().enumerate() {
            let i = i as u32;
            if !src.has_chunk(i) {
                continue;
            }
            if let Some(targets) = wanted.remove(&(*c.hash.as_bytes(), c.length)) {
                sources.push((src.clone(), i, targets));
            }
            if wanted.is_empty() {
                break;
            }
        }
    }
    let mut reused = Reused::default();
    for (src, from, targets) in sources {
        for to in targets {
            if cancel.is_cancelled() {
                return Ok(reused);
            }
            match copy_chunk(store, &src, from, pkg, to).await {
                Ok(Some(len)) => {
                    reused.chunks += 1;
                    reused.bytes += u64::from(len);
                }
                Ok(None) => {}
                // The source rotted: the network will have to do.
                Err(StoreError::Corrupt { .. }) => break,
                Err(e) => return Err(e),
            }
        }
    }
    if reused.chunks > 0 {
        tracing::info!(
            package = %pkg.name_version(),
            chunks = reused.chunks,
            bytes = reused.bytes,
            "reused chunks held in other packages"
        );
    }
    Ok(reused)
}

/// Copies chunk `from` of `src` into chunk `to` of `dst`; the length
/// copied, or `None` when `to` is held or being written already.
async fn copy_chunk(
    store: &Store,
    src: &Arc<Package>,
    from: u32,
    dst: &Arc<Package>,
    to: u32,
) -> Result<Option<u32>, StoreError> {
    let Some(mut writer) = store.begin_chunk(dst, to).await? else {
        return Ok(None);
    };
    let len = writer.remaining();
    let mut reader = store.chunk_reader(src, from, FRAME_BYTES as u32)?;
    while let Some((_, piece)) = reader.next_piece(store).await? {
        writer.write(piece).await?;
    }
    match store.finish_chunk(writer).await? {
        ChunkOutcome::Stored => Ok(Some(len)),
        // Same hash, different bytes: not a thing BLAKE3 lets happen, but
        // nothing is stored and the network still can fill it.
        ChunkOutcome::Mismatch => Ok(None),
    }
}

//! The parallel hashing pipeline.
//!
//! A producer (the caller's closure, on its own thread) reads pieces and
//! submits them; `threads` workers hash them with BLAKE3; the calling
//! thread collects hashes by submission order. Queues are bounded and
//! buffers recycled, so at most about `3 × threads + 2` pieces exist at
//! once: memory does not grow with the input.

use std::thread;

use crossbeam_channel::{Receiver, Sender, bounded};

use super::Progress;

/// Where a producer puts pieces.
#[derive(Debug)]
pub(crate) struct PieceSink {
    jobs: Sender<(usize, Vec<u8>)>,
    recycled: Receiver<Vec<u8>>,
    next: usize,
}

impl PieceSink {
    /// A buffer to read the next piece into: a recycled one when available.
    pub(crate) fn buffer(&mut self) -> Vec<u8> {
        self.recycled.try_recv().unwrap_or_default()
    }

    /// Queues a piece for hashing; blocks while the workers are busy.
    pub(crate) fn submit(&mut self, data: Vec<u8>) -> std::io::Result<()> {
        self.jobs
            .send((self.next, data))
            .map_err(|_| std::io::Error::other("hashing workers stopped"))?;
        self.next += 1;
        Ok(())
    }
}

/// Runs `produce` against a pool of `threads` hashing workers. Returns what
/// `produce` returned and the hash of every submitted piece, in order.
pub(crate) fn hash_pieces<T, E, F>(
    threads: usize,
    progress: &dyn Progress,
    produce: F,
) -> Result<(T, Vec<blake3::Hash>), E>
where
    F: FnOnce(&mut PieceSink) -> Result<T, E> + Send,
    T: Send,
    E: Send,
{
    let threads = threads.max(1);
    let (job_tx, job_rx) = bounded::<(usize, Vec<u8>)>(threads);
    let (res_tx, res_rx) = bounded::<(usize, blake3::Hash)>(threads * 4);
    let (buf_tx, buf_rx) = bounded::<Vec<u8>>(threads + 1);

    thread::scope(|s| {
        let producer = s.spawn(move || {
            let mut sink = PieceSink {
                jobs: job_tx,
                recycled: buf_rx,
                next: 0,
            };
            produce(&mut sink)
        });
        for _ in 0..threads {
            let (rx, tx, bufs) = (job_rx.clone(), res_tx.clone(), buf_tx.clone());
            s.spawn(move || {
                for (seq, data) in rx {
                    let hash = blake3::hash(&data);
                    progress.advance(data.len() as u64);
                    if tx.send((seq, hash)).is_err() {
                        break;
                    }
                    let _ = bufs.try_send(data);
                }
            });
        }
        drop((job_rx, res_tx, buf_tx));

        let mut hashes: Vec<Option<blake3::Hash>> = Vec::new();
        for (seq, hash) in res_rx {
            if seq >= hashes.len() {
                hashes.resize(seq + 1, None);
            }
            hashes[seq] = Some(hash);
        }
        let out = match producer.join() {
            Ok(r) => r?,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        let hashes = hashes
            .into_iter()
            .map(|h| h.expect("every submitted piece is hashed once the workers drain"))
            .collect();
        Ok((out, hashes))
    })
}

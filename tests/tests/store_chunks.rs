//! Streaming chunk I/O in the store: a chunk is written in place under an
//! exclusive claim and held only once the whole of it matches its hash; a
//! chunk rotted on disk is never served whole and drops out of the
//! bitfield, whether it is checked against the checksum taken when it was
//! stored or (held since before a restart) against its hash; chunks a
//! restarted store finds in its bitfield are held as claimed until their
//! re-verification drops the bad ones.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use shoal_agent::store::{ChunkOutcome, Package, Store, StoreError};
use shoal_proto::chunking::ChunkingSpec;
use shoal_proto::signing::TrustedKeys;
use shoal_tests::swarm::Pki;
use shoal_tests::{flip_byte, write_random};

const CHUNK: usize = 1 << 20;

/// A store holding an admitted (empty) download of a 4-chunk package, and
/// the package's content for reference.
async fn setup(work: &std::path::Path) -> (Arc<Store>, Arc<Package>, Vec<u8>) {
    let pki = Pki::new();
    let content = work.join("content");
    std::fs::create_dir_all(&content).expect("mkdir");
    write_random(&content.join("data.bin"), 4 * CHUNK as u64, b"store-chunks");
    let signed = pki.package(
        &content,
        "lab/chunks",
        ChunkingSpec::fixed(CHUNK as u32).expect("valid"),
    );
    let mut trusted = TrustedKeys::new();
    trusted.insert(pki.publisher.public());
    let verified = signed.verify(&trusted).expect("verify");
    let store = Store::open(&work.join("data"), 0).await.expect("open");
    let pkg = store
        .add_download(&verified, 0, false)
        .await
        .expect("admit");
    let bytes = std::fs::read(content.join("data.bin")).expect("read");
    (store, pkg, bytes)
}

fn piece(bytes: &[u8], chunk: usize, from: usize, to: usize) -> Bytes {
    Bytes::copy_from_slice(&bytes[chunk * CHUNK + from..chunk * CHUNK + to])
}

#[tokio::test]
async fn a_chunk_is_claimed_once_and_held_only_when_it_matches() {
    let work = tempfile::tempdir().expect("tempdir");
    let (store, pkg, bytes) = setup(work.path()).await;

    let mut w = store
        .begin_chunk(&pkg, 0)
        .await
        .expect("begin")
        .expect("claim");
    assert!(
        store.begin_chunk(&pkg, 0).await.expect("begin").is_none(),
        "a second writer must not get the chunk while the first writes it"
    );
    // Garbage of the right length: written in place, never held.
    w.write(Bytes::from(vec![0xAB; CHUNK]))
        .await
        .expect("write");
    assert_eq!(
        store.finish_chunk(w).await.expect("finish"),
        ChunkOutcome::Mismatch
    );
    assert!(!pkg.has_chunk(0));

    // The claim was released: the right bytes, in two pieces, are held.
    let mut w = store
        .begin_chunk(&pkg, 0)
        .await
        .expect("begin")
        .expect("claim again");
    w.write(piece(&bytes, 0, 0, CHUNK / 3))
        .await
        .expect("write");
    w.write(piece(&bytes, 0, CHUNK / 3, CHUNK))
        .await
        .expect("write");
    assert_eq!(
        store.finish_chunk(w).await.expect("finish"),
        ChunkOutcome::Stored
    );
    assert!(pkg.has_chunk(0));
    assert!(
        store.begin_chunk(&pkg, 0).await.expect("begin").is_none(),
        "held chunks are not rewritten"
    );

    // More bytes than the chunk has are refused.
    let mut w = store
        .begin_chunk(&pkg, 1)
        .await
        .expect("begin")
        .expect("claim");
    assert!(w.write(Bytes::from(vec![0; CHUNK + 1])).await.is_err());
}

#[tokio::test]
async fn a_buffered_copy_waits_for_the_writer_and_takes_over_when_it_fails() {
    let work = tempfile::tempdir().expect("tempdir");
    let (store, pkg, bytes) = setup(work.path()).await;

    // The streaming writer fails verification; the buffered copy, which
    // waited for the claim, is stored.
    let mut w = store
        .begin_chunk(&pkg, 2)
        .await
        .expect("begin")
        .expect("claim");
    let waiter = {
        let (store, pkg, data) = (store.clone(), pkg.clone(), piece(&bytes, 2, 0, CHUNK));
        tokio::spawn(async move { store.write_chunk(&pkg, 2, data).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !waiter.is_finished(),
        "the buffered copy must wait for the claim"
    );
    w.write(Bytes::from(vec![1; CHUNK])).await.expect("write");
    assert_eq!(
        store.finish_chunk(w).await.expect("finish"),
        ChunkOutcome::Mismatch
    );
    let stored = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter finishes")
        .expect("join")
        .expect("write");
    assert!(stored, "the buffered copy is stored once the claim is free");
    assert!(pkg.has_chunk(2));

    // Once held, a late duplicate is a no-op.
    assert!(
        !store
            .write_chunk(&pkg, 2, piece(&bytes, 2, 0, CHUNK))
            .await
            .expect("write")
    );
}

#[tokio::test]
async fn a_chunk_rotted_on_disk_is_not_served_whole_and_is_dropped() {
    let work = tempfile::tempdir().expect("tempdir");
    let (store, pkg, bytes) = setup(work.path()).await;
    for c in 0..2 {
        assert!(
            store
                .write_chunk(&pkg, c, piece(&bytes, c as usize, 0, CHUNK))
                .await
                .expect("write")
        );
    }

    // A sound chunk reads back in pieces, identical.
    let mut r = store.chunk_reader(&pkg, 0, 300 << 10).expect("reader");
    let mut out = Vec::new();
    while let Some((offset, data)) = r.next_piece(&store).await.expect("piece") {
        assert_eq!(offset as usize, out.len());
        out.extend_from_slice(&data);
    }
    assert_eq!(out, &bytes[..CHUNK]);

    // Flip a byte in chunk 1's file region: every piece but the last may
    // go out; the last is an error and the chunk leaves the bitfield.
    let file = pkg.root().join("data.bin");
    flip_byte(&file, (CHUNK + 10) as u64);
    let mut r = store.chunk_reader(&pkg, 1, 300 << 10).expect("reader");
    let mut served = 0usize;
    let err = loop {
        match r.next_piece(&store).await {
            Ok(Some((_, d))) => served += d.len(),
            Ok(None) => panic!("a corrupt chunk was served whole"),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, StoreError::Corrupt { chunk: 1 }), "{err}");
    assert!(served < CHUNK);
    assert!(!pkg.has_chunk(1));
    assert!(matches!(
        store.chunk_reader(&pkg, 1, 1 << 20),
        Err(StoreError::NotHeld { chunk: 1 })
    ));
}

#[tokio::test]
async fn chunks_claimed_at_restart_are_held_until_reverified_and_dropped_if_bad() {
    let work = tempfile::tempdir().expect("tempdir");
    let (store, pkg, bytes) = setup(work.path()).await;
    for c in 0..3 {
        assert!(
            store
                .write_chunk(&pkg, c, piece(&bytes, c as usize, 0, CHUNK))
                .await
                .expect("write")
        );
    }
    store.save_dirty().expect("save");
    let file = pkg.root().join("data.bin");
    drop(pkg);
    drop(store);

    // What a crash leaves: the bitfield says chunk 2 is held, the disk
    // disagrees.
    flip_byte(&file, (2 * CHUNK + 7) as u64);
    let store = Store::open(&work.path().join("data"), 0)
        .await
        .expect("reopen");
    let pkg = store.list().into_iter().next().expect("restored");
    assert_eq!(pkg.have().count(), 3, "claimed chunks are held at start-up");
    assert!(pkg.has_unverified());
    assert!(
        matches!(store.complete(&pkg).await, Err(StoreError::Internal(_))),
        "not completable before re-verification"
    );

    let cancel = tokio_util::sync::CancellationToken::new();
    let dropped = store.verify_restored(&pkg, &cancel).await.expect("verify");
    assert_eq!(dropped, vec![2]);
    assert!(!pkg.has_unverified());
    assert!(pkg.has_chunk(0) && pkg.has_chunk(1) && !pkg.has_chunk(2));
    // A second pass has nothing left to do.
    assert!(
        store
            .verify_restored(&pkg, &cancel)
            .await
            .expect("again")
            .is_empty()
    );
}

/// Reads `chunk` whole through a reader, as serving does.
async fn serve(store: &Store, pkg: &Arc<Package>, chunk: u32) -> Result<Vec<u8>, StoreError> {
    let mut r = store.chunk_reader(pkg, chunk, 300 << 10)?;
    let mut out = Vec::new();
    while let Some((_, data)) = r.next_piece(store).await? {
        out.extend_from_slice(&data);
    }
    Ok(out)
}

/// Chunks held from before a restart have no checksum yet: serving checks
/// their hash, and a rotted one is still caught; once served, a chunk is
/// checked against the checksum it learned, which catches rot as well.
#[tokio::test]
async fn chunks_held_across_a_restart_are_checked_when_served() {
    let work = tempfile::tempdir().expect("tempdir");
    let (store, pkg, bytes) = setup(work.path()).await;
    for c in 0..2 {
        assert!(
            store
                .write_chunk(&pkg, c, piece(&bytes, c as usize, 0, CHUNK))
                .await
                .expect("write")
        );
    }
    store.save_dirty().expect("save");
    let file = pkg.root().join("data.bin");
    drop(pkg);
    drop(store);

    flip_byte(&file, (CHUNK + 99) as u64);
    let store = Store::open(&work.path().join("data"), 0)
        .await
        .expect("reopen");
    let pkg = store.list().into_iter().next().expect("restored");
    assert_eq!(
        serve(&store, &pkg, 0).await.expect("sound"),
        &bytes[..CHUNK]
    );
    let err = serve(&store, &pkg, 1).await.expect_err("rotted");
    assert!(matches!(err, StoreError::Corrupt { chunk: 1 }), "{err}");

    // Chunk 0 rots after it was served once.
    flip_byte(&file, 12_345);
    let err = serve(&store, &pkg, 0).await.expect_err("rotted later");
    assert!(matches!(err, StoreError::Corrupt { chunk: 0 }), "{err}");
    assert!(!pkg.has_chunk(0) && !pkg.has_chunk(1));
}

/// Small files share chunks (fixed chunking packs them): a packed chunk is
/// written and read in pieces that cross file boundaries, lands in every
/// file, and a byte rotted in any one of its files drops the whole chunk.
#[tokio::test]
async fn packed_chunks_of_small_files_round_trip_and_rot_as_one() {
    let work = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new();
    let content = work.path().join("content");
    std::fs::create_dir_all(content.join("notes")).expect("mkdir");
    for i in 0..30u64 {
        // 5 KiB to 95 KiB: both sides of the 64 KiB direct-I/O line.
        let len = 5 * 1024 + i * 3 * 1024 + i;
        write_random(
            &content.join(format!("notes/{i:02}")),
            len,
            &i.to_le_bytes(),
        );
    }
    write_random(&content.join("zz.bin"), (CHUNK + 1000) as u64, b"tail");
    let signed = pki.package(
        &content,
        "lab/packed",
        ChunkingSpec::fixed(256 << 10).expect("valid"),
    );
    let mut trusted = TrustedKeys::new();
    trusted.insert(pki.publisher.public());
    let verified = signed.verify(&trusted).expect("verify");
    let store = Store::open(&work.path().join("data"), 0)
        .await
        .expect("open");
    let pkg = store
        .add_download(&verified, 0, false)
        .await
        .expect("admit");
    let m = &pkg.manifest;
    let packed: Vec<usize> = (0..m.chunks.len())
        .filter(|&c| m.spans(c).count() > 1)
        .collect();
    assert!(packed.len() >= 3, "{} packed chunks", packed.len());

    // Every chunk, in 7 KiB pieces, from the source files.
    for c in 0..m.chunks.len() {
        let mut bytes = Vec::new();
        for s in m.spans(c) {
            let data = std::fs::read(content.join(&m.files[s.file as usize].path)).expect("read");
            bytes.extend_from_slice(&data[s.offset as usize..s.offset as usize + s.len as usize]);
        }
        let mut w = store
            .begin_chunk(&pkg, c as u32)
            .await
            .expect("begin")
            .expect("claim");
        for piece in bytes.chunks(7 << 10) {
            w.write(Bytes::copy_from_slice(piece)).await.expect("write");
        }
        assert_eq!(
            store.finish_chunk(w).await.expect("finish"),
            ChunkOutcome::Stored,
            "chunk {c}"
        );
    }
    for f in m.files.iter().filter(|f| f.size() > 0) {
        assert_eq!(
            std::fs::read(pkg.root().join(&f.path)).expect("read"),
            std::fs::read(content.join(&f.path)).expect("read"),
            "{}",
            f.path
        );
    }

    // A packed chunk reads back whole, in pieces crossing its files.
    let c = packed[1];
    let mut r = store.chunk_reader(&pkg, c as u32, 10_000).expect("reader");
    let mut out = Vec::new();
    while let Some((offset, data)) = r.next_piece(&store).await.expect("piece") {
        assert_eq!(offset as usize, out.len());
        out.extend_from_slice(&data);
    }
    assert_eq!(out.len(), m.chunks[c].length as usize);
    assert_eq!(blake3::hash(&out), m.chunks[c].hash);

    // Rot in the pack's last file: not served whole, dropped.
    let last = m.spans(c).last().expect("spans");
    flip_byte(&pkg.root().join(&m.files[last.file as usize].path), 3);
    let mut r = store.chunk_reader(&pkg, c as u32, 10_000).expect("reader");
    let err = loop {
        match r.next_piece(&store).await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("a corrupt packed chunk was served whole"),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(!pkg.has_chunk(c as u32));

    // Rot in another pack's first file, found by re-verification after a
    // restart.
    let d = packed[0];
    let first = m.spans(d).next().expect("spans");
    let victim = pkg.root().join(&m.files[first.file as usize].path);
    store.save_dirty().expect("save");
    drop(pkg);
    drop(store);
    flip_byte(&victim, 1);
    let store = Store::open(&work.path().join("data"), 0)
        .await
        .expect("reopen");
    let pkg = store.list().into_iter().next().expect("restored");
    let cancel = tokio_util::sync::CancellationToken::new();
    let dropped = store.verify_restored(&pkg, &cancel).await.expect("verify");
    assert_eq!(dropped, vec![d as u32]);
}

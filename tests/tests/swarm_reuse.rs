//! Next month's image: an agent holding v1 of a package fetches v2, in
//! which a few regions changed and some bytes were inserted. Chunks v2
//! shares with v1 (CDC keeps them after the insertion) are copied on the
//! host; only the changed ones cross the network, and v2 ends up
//! bit-identical.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use shoal_agent::agent::Agent;
use shoal_proto::SignedManifest;
use shoal_proto::chunking::ChunkingSpec;
use shoal_proto::package::{CreateOptions, create_manifest};
use shoal_tests::swarm::{Pki, connect_all, eventually, fetch, tree_hashes};
use shoal_tests::write_random;

const SIZE: u64 = 48 << 20;
/// Bytes changed in place, in four regions, plus bytes inserted.
const CHANGED: u64 = 4 * (128 << 10);
const INSERTED: usize = 4000;

fn sign(pki: &Pki, content: &Path, version: &str) -> SignedManifest {
    let opts = CreateOptions {
        name: "lab/image".into(),
        version: version.into(),
        chunking: ChunkingSpec::cdc(64 << 10).expect("chunking"),
        publisher: pki.publisher.public(),
        threads: 2,
        created_unix_ms: Some(0),
        labels: Default::default(),
    };
    let m = create_manifest(content, &opts, &()).expect("create");
    SignedManifest::sign(&m, &pki.publisher).expect("sign")
}

/// v2: v1 with four 128 KiB regions overwritten and `INSERTED` bytes
/// inserted a third of the way in (everything after it shifts).
fn make_v2(v1: &Path, v2: &Path) {
    let mut data = Vec::new();
    std::fs::File::open(v1)
        .and_then(|mut f| f.read_to_end(&mut data))
        .expect("read v1");
    for k in 0..4u64 {
        let at = (SIZE / 5 * (k + 1)) as usize;
        for (i, b) in data[at..at + (128 << 10)].iter_mut().enumerate() {
            *b = b.wrapping_add(1 + (i % 7) as u8);
        }
    }
    let cut = (SIZE / 3) as usize;
    let insert: Vec<u8> = (0..INSERTED).map(|i| (i * 13 % 256) as u8).collect();
    data.splice(cut..cut, insert);
    let mut f = std::fs::File::create(v2).expect("create v2");
    f.write_all(&data).expect("write v2");
    f.seek(SeekFrom::Start(0)).expect("seek");
}

fn received(a: &Agent) -> u64 {
    let c = &a.context().counters;
    c.received_from_peers.load(Ordering::Relaxed) + c.received_from_origin.load(Ordering::Relaxed)
}

async fn complete(a: &Agent, verified: &shoal_proto::signing::VerifiedManifest) {
    let id = verified.content_id;
    eventually(Duration::from_secs(120), "the package to complete", || {
        a.context()
            .store
            .get(&id)
            .is_some_and(|p| p.record().state == shoal_agent::store::PackageState::Complete)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_version_fetches_only_what_changed() {
    let pki = Pki::new();
    let work = tempfile::tempdir().expect("tempdir");
    let (c1, c2) = (work.path().join("v1"), work.path().join("v2"));
    std::fs::create_dir_all(&c1).expect("mkdir");
    std::fs::create_dir_all(&c2).expect("mkdir");
    write_random(&c1.join("image.bin"), SIZE, b"month one");
    make_v2(&c1.join("image.bin"), &c2.join("image.bin"));
    let (v1, v2) = (sign(&pki, &c1, "1"), sign(&pki, &c2, "2"));

    let seed = Agent::start(pki.config("seed", &work.path().join("seed")))
        .await
        .expect("seed starts");
    let trusted = seed.context().trusted();
    let (v1, v2) = (
        v1.verify(&trusted).expect("verifies"),
        v2.verify(&trusted).expect("verifies"),
    );
    for (verified, content) in [(&v1, &c1), (&v2, &c2)] {
        seed.context()
            .store
            .add_published(verified, content)
            .await
            .expect("publish");
    }
    let agent = Agent::start(pki.config("desk", &work.path().join("desk")))
        .await
        .expect("agent starts");
    connect_all(&[&seed, &agent]);

    fetch(&agent, "lab/image@1").await;
    complete(&agent, &v1).await;
    let after_v1 = received(&agent);
    assert!(after_v1 >= SIZE, "v1 came over the network: {after_v1}");

    fetch(&agent, "lab/image@2").await;
    complete(&agent, &v2).await;
    let moved = received(&agent) - after_v1;
    let reused = agent
        .context()
        .counters
        .reused_locally
        .load(Ordering::Relaxed);
    // Each changed region spoils the chunk it falls in and perhaps a
    // neighbour (CDC chunks average 64 KiB, at most 256 KiB).
    let bound = CHANGED + INSERTED as u64 + 5 * 2 * (256 << 10);
    assert!(
        moved <= bound,
        "v2 moved {moved} bytes over the network; at most {bound} expected (reused {reused})"
    );
    assert!(reused >= SIZE - bound, "only {reused} bytes reused from v1");
    let path = agent.context().store.stable_path(&v2.manifest);
    assert_eq!(tree_hashes(&path), tree_hashes(&c2), "v2 differs");
    // v1 is untouched.
    let path = agent.context().store.stable_path(&v1.manifest);
    assert_eq!(tree_hashes(&path), tree_hashes(&c1), "v1 changed");
    eprintln!(
        "v2: {moved} bytes over the network ({:.1} % of {SIZE}), {reused} reused",
        moved as f64 * 100.0 / SIZE as f64
    );
}

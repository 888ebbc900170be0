//! A seed and five agents on loopback, real mTLS, real files: every agent
//! completes a 256 MiB package, bit-identical, with fixed and CDC chunks.

use std::time::Duration;

use shoal_agent::agent::Agent;
use shoal_proto::chunking::ChunkingSpec;
use shoal_tests::swarm::{Pki, connect_all, eventually, fetch, tree_hashes};
use shoal_tests::write_random;

const SIZE: u64 = 256 << 20;

async fn swarm_delivers(chunking: ChunkingSpec, name: &str) {
    let pki = Pki::new();
    let work = tempfile::tempdir().expect("tempdir");
    let content = work.path().join("content");
    std::fs::create_dir_all(content.join("docs")).expect("mkdir");
    write_random(&content.join("image.bin"), SIZE, name.as_bytes());
    write_random(&content.join("docs/small.txt"), 1234, b"small");
    let signed = pki.package(&content, name, chunking);

    let seed = Agent::start(pki.config("seed", &work.path().join("seed")))
        .await
        .expect("seed starts");
    let verified = signed.verify(&seed.context().trusted()).expect("verifies");
    seed.context()
        .store
        .add_published(&verified, &content)
        .await
        .expect("publish");

    let mut agents = Vec::new();
    for i in 0..5 {
        let id = format!("agent-{i}");
        agents.push(
            Agent::start(pki.config(&id, &work.path().join(&id)))
                .await
                .expect("agent starts"),
        );
    }
    let mut all: Vec<&Agent> = agents.iter().collect();
    all.push(&seed);
    connect_all(&all);

    let reference = format!("{name}@1");
    for a in &agents {
        fetch(a, &reference).await;
    }
    let id = verified.content_id;
    eventually(Duration::from_secs(240), "every agent to complete", || {
        agents.iter().all(|a| {
            a.context()
                .store
                .get(&id)
                .is_some_and(|p| p.record().state == shoal_agent::store::PackageState::Complete)
        })
    })
    .await;

    let expected = tree_hashes(&content);
    for a in &agents {
        let path = a.context().store.stable_path(&verified.manifest);
        assert_eq!(tree_hashes(&path), expected, "{} differs", path.display());
    }
    let sent_by_seed = seed
        .context()
        .counters
        .sent
        .load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "{name}: seed uploaded {:.2} copies",
        sent_by_seed as f64 / (SIZE as f64)
    );

    for a in agents {
        a.shutdown().await;
    }
    seed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_and_five_agents_fixed_chunks() {
    swarm_delivers(
        ChunkingSpec::fixed(4 << 20).expect("valid"),
        "it/image-fixed",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_and_five_agents_cdc_chunks() {
    swarm_delivers(ChunkingSpec::cdc(1 << 20).expect("valid"), "it/image-cdc").await;
}

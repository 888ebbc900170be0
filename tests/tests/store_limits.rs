//! The cache quota evicts least recently used, unpinned packages, and
//! refuses clearly what cannot fit; a full disk is a clear error and
//! leaves nothing half-made.

use std::path::Path;
use std::time::Duration;

use shoal_agent::agent::Agent;
use shoal_agent::store::PackageState;
use shoal_proto::chunking::ChunkingSpec;
use shoal_tests::swarm::{Pki, connect_all, eventually};
use shoal_tests::write_random;

async fn publish(pki: &Pki, seed: &Agent, dir: &Path, name: &str, size: u64) {
    let content = dir.join(name.replace('/', "_"));
    std::fs::create_dir_all(&content).expect("mkdir");
    write_random(&content.join("data.bin"), size, name.as_bytes());
    let signed = pki.package(&content, name, ChunkingSpec::fixed(1 << 20).expect("valid"));
    seed.publish(&signed, &content).await.expect("publish");
}

async fn fetch_and_wait(agent: &Agent, reference: &str) {
    let pkg = agent.fetch(reference).await.expect("queued");
    eventually(Duration::from_secs(60), reference, || {
        pkg.record().state == PackageState::Complete
    })
    .await;
}

fn held(agent: &Agent) -> Vec<String> {
    agent
        .context()
        .store
        .list()
        .iter()
        .map(|p| p.name_version())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_evicts_least_recently_used_unpinned() {
    let pki = Pki::new();
    let work = tempfile::tempdir().expect("tempdir");
    let seed = Agent::start(pki.config("seed", &work.path().join("seed")))
        .await
        .expect("seed");
    for name in ["lab/p1", "lab/p2", "lab/p3"] {
        publish(&pki, &seed, work.path(), name, 8 << 20).await;
    }
    publish(&pki, &seed, work.path(), "lab/huge", 32 << 20).await;
    let mut cfg = pki.config("agent", &work.path().join("agent"));
    cfg.limits.cache_quota = 20 << 20;
    let agent = Agent::start(cfg).await.expect("agent");
    connect_all(&[&seed, &agent]);

    fetch_and_wait(&agent, "lab/p1@1").await;
    fetch_and_wait(&agent, "lab/p2@1").await;
    let p1_dir = agent
        .context()
        .store
        .stable_path(&agent.context().store.find("lab/p1@1").expect("p1").manifest);
    assert!(p1_dir.exists());
    // p3 does not fit beside p1 and p2: p1, the least recently used, goes.
    fetch_and_wait(&agent, "lab/p3@1").await;
    assert_eq!(held(&agent), vec!["lab/p2@1", "lab/p3@1"]);
    assert!(!p1_dir.exists(), "evicted content is still on disk");

    // A pinned package stays; the other one makes room instead.
    let p2 = agent.context().store.find("lab/p2@1").expect("p2");
    agent.context().store.set_pinned(&p2, true).expect("pin");
    fetch_and_wait(&agent, "lab/p1@1").await;
    assert_eq!(held(&agent), vec!["lab/p1@1", "lab/p2@1"]);

    // Something that can never fit is refused, clearly, and nothing is kept.
    let err = agent.fetch("lab/huge@1").await.expect_err("over quota");
    assert!(err.to_string().contains("cache quota exceeded"), "{err}");
    assert!(agent.context().store.find("lab/huge@1").is_none());

    agent.shutdown().await;
    seed.shutdown().await;
}

/// A 16 MiB tmpfs, unmounted on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Self(at.to_owned()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_is_a_clear_error_and_stores_nothing() {
    let pki = Pki::new();
    let work = tempfile::tempdir().expect("tempdir");
    let disk = match SmallDisk::mount(&work.path().join("small")) {
        Ok(d) => d,
        Err(e) => {
            eprintln!(
                "SKIPPED full_disk_is_a_clear_error_and_stores_nothing: cannot mount a tmpfs (needs root): {e}"
            );
            return;
        }
    };
    let seed = Agent::start(pki.config("seed", &work.path().join("seed")))
        .await
        .expect("seed");
    publish(&pki, &seed, work.path(), "lab/big", 32 << 20).await;
    publish(&pki, &seed, work.path(), "lab/small", 2 << 20).await;
    let agent = Agent::start(pki.config("agent", &disk.0.join("agent")))
        .await
        .expect("agent");
    connect_all(&[&seed, &agent]);

    let err = agent.fetch("lab/big@1").await.expect_err("disk full");
    assert!(err.to_string().contains("disk full"), "{err}");
    assert!(
        agent.context().store.find("lab/big@1").is_none(),
        "a half-made package was kept"
    );
    let content = disk.0.join("agent/content");
    let leftovers = std::fs::read_dir(&content).map(|d| d.count()).unwrap_or(0);
    assert_eq!(leftovers, 0, "partial files left in {}", content.display());
    // The agent carries on: what fits still arrives, verified.
    fetch_and_wait(&agent, "lab/small@1").await;

    agent.shutdown().await;
    seed.shutdown().await;
}

//! In-process swarms on loopback: a throwaway CA, a publisher key, and
//! agents started from the library with their own data directories.

use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal_agent::agent::Agent;
use shoal_agent::config::{AgentConfig, TlsPaths};
use shoal_proto::chunking::ChunkingSpec;
use shoal_proto::package::{CreateOptions, create_manifest};
use shoal_proto::pki::{CertificateAuthority, IssueRequest};
use shoal_proto::{PublisherKey, SignedManifest};

/// Installs ring as rustls's process-wide provider (idempotent) and a log
/// subscriber honouring RUST_LOG.
pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A CA and a publisher key in a temporary directory.
#[derive(Debug)]
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: CertificateAuthority,
    pub publisher: PublisherKey,
}

impl Pki {
    pub fn new() -> Self {
        init();
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = CertificateAuthority::generate("shoal test CA").expect("ca");
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).expect("write");
        Self {
            dir,
            ca,
            publisher: PublisherKey::generate().expect("key"),
        }
    }

    /// Certificate files for `agent_id`, valid for a day.
    pub fn agent_tls(&self, agent_id: &str, groups: &[&str]) -> TlsPaths {
        self.issue(IssueRequest::agent(
            agent_id,
            groups,
            Duration::from_secs(86_400),
        ))
    }

    pub fn issue(&self, req: IssueRequest) -> TlsPaths {
        let issued = self.ca.issue(&req).expect("issue");
        let cert = self.dir.path().join(format!("{}.pem", req.agent_id));
        let key = self.dir.path().join(format!("{}.key", req.agent_id));
        std::fs::write(&cert, issued.cert_pem).expect("write");
        std::fs::write(&key, issued.key_pem).expect("write");
        TlsPaths {
            ca: self.dir.path().join("ca.pem"),
            cert,
            key,
        }
    }

    /// An agent config on loopback, port chosen by the OS, mDNS off.
    pub fn config(&self, agent_id: &str, data_dir: &Path) -> AgentConfig {
        let mut c = AgentConfig::new(data_dir, self.agent_tls(agent_id, &["lab"]));
        c.listen = "127.0.0.1:0".parse().expect("addr");
        c.mdns = false;
        c.trusted_publishers.insert(self.publisher.public());
        c.swarm.request_timeout = Duration::from_secs(10);
        c
    }

    /// Packages `content` and signs it with the publisher key.
    pub fn package(&self, content: &Path, name: &str, chunking: ChunkingSpec) -> SignedManifest {
        let opts = CreateOptions {
            name: name.into(),
            version: "1".into(),
            chunking,
            publisher: self.publisher.public(),
            threads: 2,
            created_unix_ms: Some(0),
            labels: Default::default(),
        };
        let m = create_manifest(content, &opts, &()).expect("create");
        SignedManifest::sign(&m, &self.publisher).expect("sign")
    }
}

impl Pki {
    /// Writes `size` random bytes as `dir/content/image.bin`, packages and
    /// signs it, and writes the manifest to `dir/package.manifest`.
    /// Returns (content directory, manifest path).
    pub fn write_package(
        &self,
        dir: &Path,
        name: &str,
        size: u64,
        chunking: ChunkingSpec,
    ) -> (PathBuf, PathBuf) {
        let content = dir.join("content");
        std::fs::create_dir_all(&content).expect("mkdir");
        crate::write_random(&content.join("image.bin"), size, name.as_bytes());
        let signed = self.package(&content, name, chunking);
        let manifest = dir.join("package.manifest");
        std::fs::write(&manifest, signed.encode()).expect("write manifest");
        (content, manifest)
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

/// Tells every agent about every other (static peers on loopback).
pub fn connect_all(agents: &[&Agent]) {
    let addrs: Vec<String> = agents.iter().map(|a| a.listen_addr().to_string()).collect();
    for a in agents {
        let own = a.listen_addr().to_string();
        let others: Vec<String> = addrs.iter().filter(|x| **x != own).cloned().collect();
        shoal_agent::discovery::add_static_peers(&a.context().peers, &others);
    }
}

/// Asks `agent`'s local API to fetch `reference` (`name@version`), as
/// `shoal fetch` does, and returns once the agent accepted it.
pub async fn fetch(agent: &Agent, reference: &str) {
    use shoal_proto::pb;
    use shoal_proto::pb::local_control_server::LocalControl;
    let api = shoal_agent::local_api::LocalApi {
        ctx: agent.context().clone(),
        transfers: agent.transfers().clone(),
        listen_addrs: vec![],
        started: std::time::Instant::now(),
    };
    api.fetch(tonic::Request::new(pb::FetchRequest {
        package: reference.into(),
        priority: 0,
        pin: false,
    }))
    .await
    .expect("fetch accepted");
}

/// Polls `f` every 100 ms until it returns true or `timeout` passes.
pub async fn eventually(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// BLAKE3 of every regular file under `root`, by relative path.
pub fn tree_hashes(root: &Path) -> Vec<(PathBuf, blake3::Hash)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            let ft = e.file_type().expect("file type");
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                let data = std::fs::read(&p).expect("read");
                out.push((
                    p.strip_prefix(root).expect("prefix").to_owned(),
                    blake3::hash(&data),
                ));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// A raw swarm client with the identity in `tls`, dialling `addr`. Builds
/// the TLS identity by hand (not [`TlsIdentity::load`], which refuses
/// them) so expired certificates can be presented. Its connection lives
/// on the calling runtime.
///
/// [`TlsIdentity::load`]: shoal_agent::transport::tls::TlsIdentity::load
pub async fn raw_client(
    tls: &TlsPaths,
    addr: &str,
) -> Result<shoal_proto::pb::swarm_client::SwarmClient<tonic::transport::Channel>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use shoal_agent::transport::tls::{DenyList, TlsIdentity};
    use std::sync::Arc;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&tls.ca).expect("ca") {
        roots.add(c.expect("ca cert")).expect("add");
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .expect("cert")
        .collect::<Result<_, _>>()
        .expect("cert");
    let identity = shoal_proto::identity::parse_identity(&chain[0]).expect("identity");
    let key = PrivateKeyDer::from_pem_file(&tls.key).expect("key");
    let live = shoal_agent::transport::live_cert::LiveCert::new(chain.clone(), key.clone_key())
        .expect("certificate and key");
    let id = TlsIdentity {
        roots: Arc::new(roots),
        chain,
        key,
        identity,
        live,
    };
    let cfg = id
        .client_config(Arc::new(DenyList::default()))
        .expect("client config");
    let (channel, _) = shoal_agent::transport::client::Connector::new(cfg)
        .connect(addr, None)
        .await
        .map_err(|e| e.to_string())?;
    Ok(shoal_proto::pb::swarm_client::SwarmClient::new(channel))
}

/// A `GetManifest` request for `name@version`.
pub fn manifest_request(name_version: &str) -> shoal_proto::pb::GetManifestRequest {
    use shoal_proto::pb;
    pb::GetManifestRequest {
        package: Some(pb::PackageRef {
            r#ref: Some(pb::package_ref::Ref::NameVersion(name_version.into())),
        }),
    }
}

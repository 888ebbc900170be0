//! A hostile peer for tests: it announces every chunk of a real package
//! and serves its real manifest, but answers chunk requests with bytes of
//! the right length that fail their hashes.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use shoal_agent::config::TlsPaths;
use shoal_agent::transport::server::tls_incoming;
use shoal_agent::transport::tls::{DenyList, TlsIdentity};
use shoal_proto::{SignedManifest, pb};
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[derive(Debug, Clone)]
struct Evil {
    signed: SignedManifest,
    lengths: Arc<Vec<u32>>,
}

#[tonic::async_trait]
impl pb::swarm_server::Swarm for Evil {
    async fn get_manifest(
        &self,
        _: Request<pb::GetManifestRequest>,
    ) -> Result<Response<pb::GetManifestResponse>, Status> {
        Ok(Response::new(pb::GetManifestResponse {
            content_id: bytes::Bytes::copy_from_slice(self.signed.content_id().as_bytes()),
            manifest: Some(self.signed.to_pb()),
            allowed_groups: Vec::new(),
        }))
    }

    type WatchAvailabilityStream = BoxStream<pb::AvailabilityUpdate>;

    async fn watch_availability(
        &self,
        _: Request<pb::WatchAvailabilityRequest>,
    ) -> Result<Response<Self::WatchAvailabilityStream>, Status> {
        let n = self.lengths.len() as u32;
        let mut bits = vec![0u8; n.div_ceil(8) as usize];
        for i in 0..n {
            bits[(i / 8) as usize] |= 1 << (i % 8);
        }
        let snapshot = pb::AvailabilityUpdate {
            update: Some(pb::availability_update::Update::Snapshot(pb::Bitfield {
                chunk_count: n,
                bits: bits.into(),
                origin: false,
            })),
        };
        Ok(Response::new(Box::pin(tokio_stream::iter([Ok(snapshot)]))))
    }

    type FetchChunksStream = BoxStream<pb::ChunkFrame>;

    async fn fetch_chunks(
        &self,
        req: Request<pb::FetchChunksRequest>,
    ) -> Result<Response<Self::FetchChunksStream>, Status> {
        let frames: Vec<Result<pb::ChunkFrame, Status>> = req
            .into_inner()
            .chunks
            .into_iter()
            .filter_map(|c| self.lengths.get(c as usize).map(|&len| (c, len)))
            .map(|(c, len)| {
                Ok(pb::ChunkFrame {
                    chunk: c,
                    offset: 0,
                    data: vec![0xEE; len as usize].into(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(frames))))
    }

    async fn search(
        &self,
        _: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        Ok(Response::new(pb::SearchResponse { packages: vec![] }))
    }
}

/// A running hostile peer; stops when dropped.
#[derive(Debug)]
pub struct EvilPeer {
    pub addr: SocketAddr,
    cancel: CancellationToken,
}

impl Drop for EvilPeer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl EvilPeer {
    /// Serves `signed` with corrupt chunks, over mTLS with `tls`, on a
    /// loopback port.
    pub async fn start(tls: &TlsPaths, signed: SignedManifest) -> Self {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        Self::start_on(tls, signed, loopback).await
    }

    /// Like [`EvilPeer::start`], listening on `bind` (port 0: any). Its
    /// tasks run on the calling runtime.
    pub async fn start_on(tls: &TlsPaths, signed: SignedManifest, bind: SocketAddr) -> Self {
        let id = TlsIdentity::load(tls).expect("evil identity");
        let cfg = id
            .server_config(Arc::new(DenyList::default()))
            .expect("tls");
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .unwrap_or_else(|e| panic!("bind {bind}: {e}"));
        let addr = listener.local_addr().expect("addr");
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let m = signed.manifest_unverified().expect("valid");
        let evil = Evil {
            signed,
            lengths: Arc::new(m.chunks.iter().map(|c| c.length).collect()),
        };
        let incoming = tls_incoming(listener, cfg, cancel.clone(), &tracker);
        let server = tonic::transport::Server::builder()
            .add_service(pb::swarm_server::SwarmServer::new(evil))
            .serve_with_incoming_shutdown(incoming, cancel.clone().cancelled_owned());
        tokio::spawn(server);
        Self { addr, cancel }
    }
}

//! Traces over OTLP: two real agents export spans to an OTLP collector's
//! trace service run by this test. A download's trace holds its sampled
//! chunk requests, and the seed's serving of each, parented across the
//! two processes by the `traceparent` the request carried.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use shoal_proto::chunking::ChunkingSpec;
use shoal_tests::controller::wait_until;
use shoal_tests::process::AgentProcess;
use shoal_tests::swarm::Pki;

/// One received span: service, name, ids.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    name: String,
    trace: Vec<u8>,
    id: Vec<u8>,
    parent: Vec<u8>,
}

#[derive(Debug, Default, Clone)]
struct Collector(Arc<Mutex<Vec<Got>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    got.push(Got {
                        service: service.clone(),
                        name: s.name,
                        trace: s.trace_id,
                        id: s.span_id,
                        parent: s.parent_span_id,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[test]
fn a_download_trace_spans_both_agents() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let collector = Collector::default();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = collector.clone();
    rt.spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(server))
            .serve_with_incoming(incoming)
            .await;
    });

    let work = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new();
    let otlp = format!("otlp:\n  endpoint: http://{addr}\n  chunk_sample_ratio: 1.0\n");
    let seed = AgentProcess::start(&pki, "seed", &work.path().join("seed"), &[], &otlp);
    let pc = AgentProcess::start(&pki, "pc", &work.path().join("pc"), &[seed.addr()], &otlp);
    let (content, manifest) = pki.write_package(
        work.path(),
        "lab/traced",
        8 << 20,
        ChunkingSpec::fixed(1 << 20).expect("valid"),
    );
    seed.publish(&manifest, &content);
    let run = pc.shoal(&["fetch", "lab/traced@1", "--wait", "--json"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);

    let spans = || {
        collector
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    };
    // The exporter batches: spans arrive within its few-second delay.
    wait_until("the download's spans", Duration::from_secs(60), || {
        let s = spans();
        s.iter().any(|g| g.name == "package.download") && s.iter().any(|g| g.name == "chunk.serve")
    });
    let s = spans();
    let download = s
        .iter()
        .find(|g| g.name == "package.download")
        .expect("download span");
    assert!(download.service.contains("shoal-agent"), "{download:?}");
    let fetches: HashMap<Vec<u8>, &Got> = s
        .iter()
        .filter(|g| g.name == "chunk.fetch" && g.parent == download.id)
        .map(|g| (g.id.clone(), g))
        .collect();
    assert!(
        !fetches.is_empty(),
        "no chunk.fetch under the download: {s:#?}"
    );
    for f in fetches.values() {
        assert_eq!(f.trace, download.trace, "one trace");
    }
    let serves: Vec<&Got> = s.iter().filter(|g| g.name == "chunk.serve").collect();
    assert!(
        serves
            .iter()
            .all(|g| g.trace == download.trace && fetches.contains_key(&g.parent)),
        "every chunk.serve is the child of a chunk.fetch of this download: {serves:#?}"
    );
    drop(pc);
    drop(seed);
}

//! Logs and traces for the agent and the controller (the controller uses
//! this module too).
//!
//! Logs go to stderr as text or JSON. With an OTLP endpoint configured,
//! spans are also exported over OTLP/gRPC by a batching exporter; the
//! caller keeps the returned [`Telemetry`] and calls
//! [`Telemetry::shutdown`] at exit, or batched spans are lost. Trace
//! context crosses agent-to-agent calls as W3C `traceparent` gRPC
//! metadata ([`inject`], [`extract`]), so a chunk served by a peer shows up
//! under the download that asked for it.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// Where and how much to trace.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpSettings {
    /// `http://host:4317`, an OTLP/gRPC collector.
    pub endpoint: String,
    /// Share of traces kept (downloads, enrollments, admin calls), 0–1.
    pub sample_ratio: f64,
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    #[error("OTLP exporter for {endpoint}: {cause}")]
    Exporter { endpoint: String, cause: String },
}

/// Keeps the trace exporter alive; shut it down at exit.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter (bounded by
    /// the SDK's own export timeout).
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            eprintln!("flushing traces: {e}");
        }
    }
}

/// Installs the process's subscriber: `level` (an env-filter directive,
/// overridden by `RUST_LOG`), `format`, and OTLP export when `otlp` is
/// set. Call inside the Tokio runtime (the gRPC exporter needs it) and
/// keep that runtime alive until [`Telemetry::shutdown`].
pub fn init(
    service: &'static str,
    level: &str,
    format: LogFormat,
    otlp: Option<&OtlpSettings>,
) -> Result<Telemetry, TelemetryError> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let provider = match otlp {
        Some(o) => Some(provider(service, o)?),
        None => None,
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service))
            .with_tracked_inactivity(false)
    });
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let _ = match format {
        LogFormat::Json => registry.with(fmt.json()).try_init(),
        LogFormat::Text => registry.with(fmt).try_init(),
    };
    Ok(Telemetry { provider })
}

fn provider(service: &'static str, o: &OtlpSettings) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(o.endpoint.clone())
        .build()
        .map_err(|e| TelemetryError::Exporter {
            endpoint: o.endpoint.clone(),
            cause: e.to_string(),
        })?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            o.sample_ratio,
        ))))
        .with_resource(resource)
        .build())
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct MetadataExtractor<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Puts `span`'s trace context into outgoing request metadata.
pub fn inject(span: &tracing::Span, metadata: &mut tonic::metadata::MetadataMap) {
    TraceContextPropagator::new().inject_context(&span.context(), &mut MetadataInjector(metadata));
}

/// Makes the caller's trace context (from request metadata) `span`'s
/// parent; without one, `span` starts its own trace.
pub fn extract(span: &tracing::Span, metadata: &tonic::metadata::MetadataMap) {
    let cx = TraceContextPropagator::new().extract(&MetadataExtractor(metadata));
    let _ = span.set_parent(cx);
}

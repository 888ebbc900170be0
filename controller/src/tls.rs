//! TLS for the controller. The server asks for a client certificate from
//! the fleet CA but does not require one at the handshake: enrolling
//! agents have none yet, so each call checks its own requirement (only
//! `Enroll` works without). Admin clients trust the server as agents do
//! (`shoal_agent::enroll::controller_client_config`): it must chain to
//! the fleet CA and carry the `controller` role.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use shoal_agent::config::TlsPaths;
use shoal_agent::enroll::controller_client_config;
use shoal_agent::transport::tls::TlsIdentity;

use crate::ca::ServerIdentity;

const ALPN_H2: &[u8] = b"h2";

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("{path}: {reason}")]
    Load { path: String, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots_of(ca: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots
        .add(ca.clone())
        .map_err(|e| TlsError::Config(format!("CA certificate: {e}")))?;
    Ok(Arc::new(roots))
}

/// The server side: TLS 1.3, client certificates from the CA optional.
pub fn server_config(
    ca: &CertificateDer<'static>,
    id: ServerIdentity,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots_of(ca)?, provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain, id.key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(cfg))
}

/// An admin's client identity from `dir/ca.pem`, `dir/<name>.pem` and
/// `dir/<name>.key`, as `shoal-controller` writes them. The server must
/// chain to that CA and carry the controller role.
pub fn admin_client_config(dir: &Path, name: &str) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let paths = TlsPaths {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    };
    let load_err = |e: &dyn std::fmt::Display| TlsError::Load {
        path: dir.display().to_string(),
        reason: format!("{e} (pass --identity DIR with ca.pem, {name}.pem and {name}.key)"),
    };
    let identity = TlsIdentity::load(&paths).map_err(|e| load_err(&e))?;
    controller_client_config(&identity).map_err(|e| load_err(&e))
}

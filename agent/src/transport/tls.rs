//! rustls configurations: TLS 1.3 only, mutual authentication against the
//! fleet CA, and a deny list checked on both sides of every handshake.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use shoal_proto::identity::{Identity, parse_identity};

use crate::config::TlsPaths;

/// ALPN for gRPC over HTTP/2.
pub(crate) const ALPN_H2: &[u8] = b"h2";
/// Server name used when dialling a peer whose agent id is not known yet.
pub const ANY_PEER: &str = "shoal";

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("{path}: {reason}")]
    Load { path: String, reason: String },
    #[error(
        "certificate {path} expired at Unix time {not_after}; issue a new one (`shoal ca issue`, or re-enroll)"
    )]
    Expired { path: String, not_after: i64 },
    #[error("{path}: {reason}")]
    Identity { path: String, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Agent ids and certificate serials whose connections are refused.
#[derive(Debug, Default)]
pub struct DenyList(RwLock<HashSet<String>>);

impl DenyList {
    pub fn new(entries: impl IntoIterator<Item = String>) -> Self {
        Self(RwLock::new(entries.into_iter().collect()))
    }

    pub fn denies(&self, id: &Identity) -> bool {
        let set = self.0.read().unwrap_or_else(|p| p.into_inner());
        set.contains(&id.agent_id) || set.contains(&id.serial)
    }

    pub fn replace(&self, entries: impl IntoIterator<Item = String>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = entries.into_iter().collect();
    }
}

/// This agent's certificate, key and trust anchors.
#[derive(Debug)]
pub struct TlsIdentity {
    pub roots: Arc<RootCertStore>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub identity: Identity,
    /// What every configuration made from this identity presents;
    /// renewal replaces it in place.
    pub live: Arc<super::live_cert::LiveCert>,
}

impl TlsIdentity {
    /// Loads and checks the files named in the config.
    pub fn load(paths: &TlsPaths) -> Result<Self, TlsError> {
        let load_err = |p: &Path, reason: String| TlsError::Load {
            path: p.display().to_string(),
            reason,
        };
        let mut roots = RootCertStore::empty();
        let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&paths.ca)
            .map_err(|e| load_err(&paths.ca, e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| load_err(&paths.ca, e.to_string()))?;
        if cas.is_empty() {
            return Err(load_err(&paths.ca, "no certificate in the file".into()));
        }
        for ca in cas {
            roots
                .add(ca)
                .map_err(|e| load_err(&paths.ca, e.to_string()))?;
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&paths.cert)
            .map_err(|e| load_err(&paths.cert, e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| load_err(&paths.cert, e.to_string()))?;
        let leaf = chain
            .first()
            .ok_or_else(|| load_err(&paths.cert, "no certificate in the file".into()))?;
        let identity = parse_identity(leaf).map_err(|e| TlsError::Identity {
            path: paths.cert.display().to_string(),
            reason: e.to_string(),
        })?;
        let now = UnixTime::now().as_secs() as i64;
        if identity.not_after_unix < now {
            return Err(TlsError::Expired {
                path: paths.cert.display().to_string(),
                not_after: identity.not_after_unix,
            });
        }
        let key = PrivateKeyDer::from_pem_file(&paths.key)
            .map_err(|e| load_err(&paths.key, e.to_string()))?;
        let live = super::live_cert::LiveCert::new(chain.clone(), key.clone_key())?;
        Ok(Self {
            roots: Arc::new(roots),
            chain,
            key,
            identity,
            live,
        })
    }

    /// Server side: require a client certificate from the CA, not denied.
    pub fn server_config(
        &self,
        deny: Arc<DenyList>,
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = provider();
        let inner =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider.clone())
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
        let verifier = Arc::new(PeerClientVerifier { inner, deny });
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(self.live.clone());
        cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(cfg))
    }

    /// Client side: present our certificate; accept servers from the CA
    /// that are not denied and, when dialled by agent id, are that agent.
    pub fn client_config(
        &self,
        deny: Arc<DenyList>,
    ) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let provider = provider();
        let verifier = Arc::new(PeerServerVerifier {
            roots: self.roots.clone(),
            deny,
            provider: provider.clone(),
        });
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(self.live.clone());
        cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(cfg))
    }
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server name that makes the client check the peer's agent id.
pub fn server_name_for(agent_id: Option<&str>) -> ServerName<'static> {
    let name = match agent_id {
        Some(id) => format!("{id}.{ANY_PEER}"),
        None => ANY_PEER.to_owned(),
    };
    ServerName::try_from(name)
        .unwrap_or_else(|_| ServerName::try_from(ANY_PEER).expect("static name is valid"))
}

#[derive(Debug)]
struct PeerClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    deny: Arc<DenyList>,
}

impl ClientCertVerifier for PeerClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let id = parse_identity(end_entity).map_err(|e| rustls::Error::General(e.to_string()))?;
        if self.deny.denies(&id) {
            return Err(rustls::Error::General(format!(
                "agent {} is on the deny list",
                id.agent_id
            )));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[derive(Debug)]
struct PeerServerVerifier {
    roots: Arc<RootCertStore>,
    deny: Arc<DenyList>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PeerServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let id = parse_identity(end_entity).map_err(|e| rustls::Error::General(e.to_string()))?;
        if self.deny.denies(&id) {
            return Err(rustls::Error::General(format!(
                "peer {} is on the deny list",
                id.agent_id
            )));
        }
        // Peers are addressed by IP; their identity is the agent id in the
        // certificate. When we dialled a specific agent, it must be that one.
        if let ServerName::DnsName(name) = server_name
            && let Some(expected) = name.as_ref().strip_suffix(&format!(".{ANY_PEER}"))
            && expected != id.agent_id
        {
            return Err(rustls::Error::General(format!(
                "expected agent {expected}, but the peer is {}",
                id.agent_id
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

//! The agent's own certificate as every TLS configuration presents it,
//! replaceable while the agent runs: a renewed certificate takes effect
//! for the next handshake, server and client side, without a restart.
//! Connections already open keep the certificate they were made with.

use std::sync::{Arc, RwLock};

use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::tls::{TlsError, provider};

/// The certificate in force.
#[derive(Debug)]
pub struct LiveCert(RwLock<Arc<CertifiedKey>>);

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let signer = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Config(format!("private key: {e}")))?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match()
        .map_err(|e| TlsError::Config(format!("the certificate is not for this key: {e}")))?;
    Ok(Arc::new(ck))
}

impl LiveCert {
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(Self(RwLock::new(certified(chain, key)?))))
    }

    /// Presents `chain` and `key` from the next handshake on.
    pub fn replace(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(), TlsError> {
        let ck = certified(chain, key)?;
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = ck;
        Ok(())
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl ResolvesServerCert for LiveCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for LiveCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

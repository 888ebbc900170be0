//! Parsed identities of the client certificates peers present.
//!
//! Every swarm request names its caller by the certificate of its
//! connection, and parsing it (X.509, plus the SHA-256 fingerprint) on
//! every request was 0.45 % of a 30-host run's CPU. A connection carries
//! the same certificate for its whole life, so the parse is kept, keyed by
//! the certificate's bytes: a request then costs a hash lookup.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use shoal_proto::identity::{Identity, IdentityError, parse_identity};

/// Certificates remembered at most; the cache starts over when full (a
/// swarm has as many as it has peers).
const MAX_ENTRIES: usize = 4096;

/// Identities by certificate (DER).
#[derive(Debug, Default)]
pub struct IdentityCache {
    map: Mutex<HashMap<Box<[u8]>, Arc<Identity>>>,
}

impl IdentityCache {
    /// The identity `der` names, parsed once per distinct certificate.
    pub fn identity(&self, der: &[u8]) -> Result<Arc<Identity>, IdentityError> {
        if let Some(id) = self.lock().get(der) {
            return Ok(id.clone());
        }
        let id = Arc::new(parse_identity(der)?);
        let mut map = self.lock();
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(der.into(), id.clone());
        Ok(id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<[u8]>, Arc<Identity>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use shoal_proto::pki::{CertificateAuthority, IssueRequest};

    use super::*;

    fn cert(ca: &CertificateAuthority, agent_id: &str) -> CertificateDer<'static> {
        let issued = ca
            .issue(&IssueRequest::agent(
                agent_id,
                &["lab"],
                Duration::from_secs(60),
            ))
            .expect("issue");
        CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).expect("PEM")
    }

    #[test]
    fn each_certificate_is_parsed_once_and_names_its_own_holder() {
        let ca = CertificateAuthority::generate("test CA").expect("CA");
        let (a, b) = (cert(&ca, "host-a"), cert(&ca, "host-b"));
        let cache = IdentityCache::default();
        let first = cache.identity(&a).expect("a");
        assert_eq!(first.agent_id, "host-a");
        assert!(Arc::ptr_eq(&first, &cache.identity(&a).expect("a again")));
        assert_eq!(cache.identity(&b).expect("b").agent_id, "host-b");
        assert!(cache.identity(b"not a certificate").is_err());
        assert_eq!(cache.lock().len(), 2, "failures are not remembered");
    }
}

//! Renewing the agent's certificate over the controller session before it
//! expires: a fresh key and CSR made here (the key never leaves the
//! agent), the controller's certificate checked (our id, our key, the
//! fleet CA), both written atomically over the configured files, and the
//! new certificate presented from the next handshake on.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::ParsedCertificate;
use shoal_proto::identity::parse_identity;
use shoal_proto::pb;
use shoal_proto::pb::agent_control_client::AgentControlClient;

use crate::config::TlsPaths;
use crate::transport::live_cert::LiveCert;

/// How often a session checks whether renewal is due, at most: short
/// certificates are checked ten times per lifetime.
const RENEW_CHECK: Duration = Duration::from_secs(30);
/// Renewal is due once less than this share of the lifetime remains: a
/// third leaves days of retries for the usual 30-day certificates, and
/// still some for short-lived ones.
const RENEW_WHEN_LEFT: f64 = 1.0 / 3.0;

/// Why a renewal failed (it is retried at the next check).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenewError {
    #[error("making a key and certificate request: {0}")]
    Csr(String),
    #[error("the controller refused the renewal: {0}")]
    Refused(String),
    #[error("the renewed certificate is unusable: {0}")]
    BadCertificate(String),
    #[error("writing the renewed certificate: {0}")]
    Write(String),
}

/// The agent's certificate: where it lives and its validity.
#[derive(Debug)]
pub struct Renewal {
    pub agent_id: String,
    pub paths: TlsPaths,
    pub live: Arc<LiveCert>,
    pub roots: Arc<RootCertStore>,
    not_before: AtomicI64,
    not_after: AtomicI64,
}

impl Renewal {
    pub fn new(identity: &crate::transport::tls::TlsIdentity, paths: TlsPaths) -> Self {
        Self {
            agent_id: identity.identity.agent_id.clone(),
            paths,
            live: identity.live.clone(),
            roots: identity.roots.clone(),
            not_before: identity.identity.not_before_unix.into(),
            not_after: identity.identity.not_after_unix.into(),
        }
    }

    /// Expiry of the certificate in force, Unix seconds.
    pub fn not_after(&self) -> i64 {
        self.not_after.load(Ordering::Relaxed)
    }

    /// The issued lifetime in seconds: certificates start
    /// [`CLOCK_SKEW_ALLOWANCE`](shoal_proto::pki::CLOCK_SKEW_ALLOWANCE)
    /// before they were issued, which is not part of it.
    fn lifetime(&self) -> i64 {
        let skew = shoal_proto::pki::CLOCK_SKEW_ALLOWANCE.as_secs() as i64;
        let (nb, na) = (self.not_before.load(Ordering::Relaxed), self.not_after());
        let span = na - nb;
        if span > skew {
            span - skew
        } else {
            span.max(1)
        }
    }

    /// How often to check [`Renewal::due`].
    pub fn check_every(&self) -> Duration {
        let tenth = Duration::from_secs((self.lifetime() / 10).max(1) as u64);
        tenth.min(RENEW_CHECK)
    }

    /// Whether less than a third of the certificate's lifetime is left.
    pub fn due(&self, now_unix: i64) -> bool {
        ((self.not_after() - now_unix) as f64) < self.lifetime() as f64 * RENEW_WHEN_LEFT
    }

    /// Renews through `client`; returns the new expiry.
    pub async fn renew(
        &self,
        client: &mut AgentControlClient<tonic::transport::Channel>,
    ) -> Result<i64, RenewError> {
        let (csr_pem, key_pem) = shoal_proto::pki::generate_csr(&self.agent_id)
            .map_err(|e| RenewError::Csr(e.to_string()))?;
        let resp = client
            .renew(pb::RenewRequest { csr_pem })
            .await
            .map_err(|s| RenewError::Refused(format!("{:?}: {}", s.code(), s.message())))?
            .into_inner();
        let bad = |e: &dyn std::fmt::Display| RenewError::BadCertificate(e.to_string());
        let chain = CertificateDer::pem_slice_iter(resp.certificate_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(&e))?;
        let leaf = chain
            .first()
            .ok_or_else(|| bad(&"no certificate in the answer"))?;
        let id = parse_identity(leaf).map_err(|e| bad(&e))?;
        if id.agent_id != self.agent_id {
            return Err(bad(&format!("it names agent {:?}", id.agent_id)));
        }
        let parsed = ParsedCertificate::try_from(leaf).map_err(|e| bad(&e))?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            &chain[1..],
            UnixTime::now(),
            crate::transport::tls::provider()
                .signature_verification_algorithms
                .all,
        )
        .map_err(|e| bad(&format!("it does not chain to the fleet CA: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| bad(&e))?;
        // Checks the certificate is for our new key before anything is written.
        let probe = LiveCert::new(chain.clone(), key.clone_key()).map_err(|e| bad(&e))?;
        drop(probe);
        crate::enroll::write_files(&[
            (&self.paths.cert, &resp.certificate_pem, 0o644),
            (&self.paths.key, &key_pem, 0o600),
        ])
        .map_err(|e| RenewError::Write(e.to_string()))?;
        self.live.replace(chain, key).map_err(|e| bad(&e))?;
        self.not_before.store(id.not_before_unix, Ordering::Relaxed);
        self.not_after.store(id.not_after_unix, Ordering::Relaxed);
        Ok(id.not_after_unix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn renewal(not_before: i64, not_after: i64) -> Renewal {
        let (cert, key) = {
            let ca = shoal_proto::pki::CertificateAuthority::generate("test").expect("ca");
            let req = shoal_proto::pki::IssueRequest::agent("a", &[], Duration::from_secs(60));
            let issued = ca.issue(&req).expect("issue");
            (issued.cert_pem, issued.key_pem)
        };
        let chain = vec![CertificateDer::from_pem_slice(cert.as_bytes()).expect("cert")];
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
        Renewal {
            agent_id: "a".into(),
            paths: TlsPaths {
                ca: "ca.pem".into(),
                cert: "a.pem".into(),
                key: "a.key".into(),
            },
            live: LiveCert::new(chain, key).expect("live"),
            roots: Arc::new(RootCertStore::empty()),
            not_before: not_before.into(),
            not_after: not_after.into(),
        }
    }

    #[test]
    fn due_in_the_last_third_of_the_issued_lifetime() {
        let skew = shoal_proto::pki::CLOCK_SKEW_ALLOWANCE.as_secs() as i64;
        // Issued at t=1000 for 30 days: valid from 1000 - skew.
        let day = 86_400;
        let r = renewal(1000 - skew, 1000 + 30 * day);
        assert!(!r.due(1000));
        assert!(!r.due(1000 + 19 * day));
        assert!(r.due(1000 + 21 * day));
        assert_eq!(r.check_every(), RENEW_CHECK);
        // 90 s certificates: checked every 9 s, due after 60 s, not at once.
        let r = renewal(1000 - skew, 1090);
        assert!(!r.due(1000));
        assert!(!r.due(1055));
        assert!(r.due(1065));
        assert_eq!(r.check_every(), Duration::from_secs(9));
    }
}

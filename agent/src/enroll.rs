//! Enrollment, and trusting the controller.
//!
//! This module owns the agent side of `AgentControl.Enroll` and the rule
//! for recognising the controller. Enrollment makes a key and CSR locally
//! (the key never leaves the agent), connects over TLS 1.3 without a client
//! certificate, and trusts the server only if it presents the CA whose
//! SHA-256 fingerprint the operator gave, its certificate chains to that CA
//! and it carries the `controller` role. The returned certificate is checked
//! (our key, the pinned CA, the announced agent id) before the CA,
//! certificate and key are written, each atomically.
//!
//! An enrolled agent reaches the controller with
//! [`controller_client_config`]: its own certificate, and the same rule
//! with the agent's CA file as the trust root. Host names are never
//! checked; the CA is the trust root.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use shoal_proto::identity::{Identity, fingerprint, parse_identity};
use shoal_proto::pb;
use shoal_proto::pb::agent_control_client::AgentControlClient;
use shoal_proto::pki::{PkiError, generate_csr};

use crate::config::TlsPaths;
use crate::transport::client::{ConnectError, Connector};
use crate::transport::tls::{self, TlsError, TlsIdentity};
use crate::transport::{CONNECT_TIMEOUT, HANDSHAKE_TIMEOUT};

pub use shoal_proto::identity::CONTROLLER_ROLE;
/// Port of `shoal-controller` when `--controller` names none.
pub const DEFAULT_CONTROLLER_PORT: u16 = 7800;
/// How long the controller may take to answer `Enroll`.
const ENROLL_TIMEOUT: Duration = Duration::from_secs(30);

/// What `enroll` needs.
#[derive(Debug, Clone)]
pub struct EnrollOptions {
    /// `host:port` or `https://host:port`; the port defaults to 7800.
    pub controller: String,
    pub token: String,
    /// SHA-256 of the controller CA's DER certificate: hex, any case,
    /// `:` separators allowed.
    pub ca_fingerprint: String,
    /// Sent to the controller, which derives the agent id from it.
    pub hostname: String,
    /// Where the CA certificate, certificate and key are written.
    pub out: TlsPaths,
}

/// A successful enrollment.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub agent_id: String,
    pub groups: Vec<String>,
    pub not_after_unix: i64,
    pub paths: TlsPaths,
}

/// Why the controller's certificate was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ControllerTrustError {
    #[error(
        "the controller's CA fingerprint does not match the one given: expected {expected}, the server presented {presented}. \
         Compare --ca-fingerprint with `shoal-controller ca-fingerprint` on the controller; if they agree, \
         something else is answering at this address: do not enroll against it"
    )]
    FingerprintMismatch { expected: String, presented: String },
    #[error("the controller's certificate does not chain to the trusted CA: {0}")]
    Chain(String),
    #[error("the server's certificate carries no usable identity: {0}")]
    Identity(String),
    #[error(
        "the server's certificate (for {agent_id:?}) is from the fleet CA but lacks the `controller` role: \
         check that the address is the controller's"
    )]
    NotController { agent_id: String },
}

/// Why enrollment failed. [`EnrollError::exit_code`] maps it to sysexits.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrollError {
    #[error("{what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error("cannot make this agent's key and certificate request: {0}")]
    Key(#[from] PkiError),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error(
        "cannot reach the controller at {addr}: {cause} (check --controller, and that shoal-controller runs and is reachable from here)"
    )]
    Unreachable { addr: String, cause: String },
    #[error(transparent)]
    Untrusted(#[from] ControllerTrustError),
    #[error(
        "the controller refused the join token: {0} (an admin makes tokens with `shoal-controller token create`)"
    )]
    TokenRefused(String),
    #[error("the controller could not enroll this agent: {code:?}: {message}")]
    Controller { code: tonic::Code, message: String },
    #[error(
        "the controller's answer is unusable, nothing was written: {0} (a controller bug, or not the controller)"
    )]
    BadResponse(String),
    #[error(
        "cannot write {path}: {cause} (check the directory exists or can be created, and permissions)"
    )]
    Write { path: String, cause: std::io::Error },
}

impl EnrollError {
    /// sysexits(3) code: 78 bad argument, 69 controller unreachable or
    /// failing, 77 token refused or controller not trusted, 76 bad answer,
    /// 73 files not writable, 70 internal.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Invalid { .. } => 78,
            Self::Key(_) | Self::Tls(_) => 70,
            Self::Unreachable { .. } | Self::Controller { .. } => 69,
            Self::Untrusted(_) | Self::TokenRefused(_) => 77,
            Self::BadResponse(_) => 76,
            Self::Write { .. } => 73,
        }
    }
}

fn invalid(what: &'static str, reason: impl Into<String>) -> EnrollError {
    EnrollError::Invalid {
        what,
        reason: reason.into(),
    }
}

/// Enrolls this agent: see the module documentation for the steps.
pub async fn enroll(opts: &EnrollOptions) -> Result<Enrolled, EnrollError> {
    let addr = controller_addr(&opts.controller)?;
    let pinned = normalize_fingerprint(&opts.ca_fingerprint)?;
    if opts.hostname.trim().is_empty() {
        return Err(invalid("--hostname", "must not be empty"));
    }
    let (csr_pem, key_pem) = generate_csr(&opts.hostname)?;

    let verifier = Arc::new(ControllerVerifier::new(Trust::Pinned(pinned.clone())));
    let config =
        client_config(verifier.clone(), None).map_err(|e| EnrollError::Tls(e.to_string()))?;
    let unreachable = |cause: String| EnrollError::Unreachable {
        addr: addr.clone(),
        cause,
    };
    let connector = Connector::new(config);
    let connect = connector.connect(&addr, None);
    let channel = match tokio::time::timeout(CONNECT_TIMEOUT + HANDSHAKE_TIMEOUT, connect).await {
        Ok(Ok((channel, _))) => channel,
        // The verifier's own reason beats rustls's summary of it.
        Ok(Err(e)) => {
            if let Some(refusal) = verifier.refusal() {
                return Err(refusal.into());
            }
            return Err(unreachable(match e {
                ConnectError::Transport { cause, .. } => cause,
                other => other.to_string(),
            }));
        }
        Err(_) => return Err(unreachable("timed out".into())),
    };
    tracing::debug!(controller = %addr, "connected; enrolling");

    let request = pb::EnrollRequest {
        token: opts.token.clone(),
        csr_pem,
        hostname: opts.hostname.clone(),
        labels: Vec::new(),
    };
    let mut client = AgentControlClient::new(channel);
    let response = match tokio::time::timeout(ENROLL_TIMEOUT, client.enroll(request)).await {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(status)) => return Err(status_error(&addr, status)),
        Err(_) => return Err(unreachable("no answer to Enroll in time".into())),
    };

    let id = check_response(&response, &key_pem, &pinned)?;
    let out = &opts.out;
    write_files(&[
        (&out.ca, &response.ca_certificate_pem, 0o644),
        (&out.cert, &response.certificate_pem, 0o644),
        (&out.key, &key_pem, 0o600),
    ])?;
    Ok(Enrolled {
        agent_id: id.agent_id,
        groups: id.groups,
        not_after_unix: id.not_after_unix,
        paths: out.clone(),
    })
}

/// Client configuration for an enrolled agent talking to the controller:
/// presents the agent's certificate; accepts a server that chains to the
/// agent's CA roots and carries the `controller` role (no name check).
pub fn controller_client_config(
    identity: &TlsIdentity,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let verifier = Arc::new(ControllerVerifier::new(Trust::Roots(
        identity.roots.clone(),
    )));
    client_config(verifier, Some(identity))
}

fn client_config(
    verifier: Arc<ControllerVerifier>,
    identity: Option<&TlsIdentity>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut cfg = match identity {
        Some(id) => builder.with_client_cert_resolver(id.live.clone()),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![tls::ALPN_H2.to_vec()];
    Ok(Arc::new(cfg))
}

/// The `host:port` to dial from `host[:port]` or `https://host[:port]`.
fn controller_addr(given: &str) -> Result<String, EnrollError> {
    parse_controller_addr(given).map_err(|reason| invalid("--controller", reason))
}

/// The controller's `host:port` from `host[:port]` or `https://host[:port]`
/// (the port defaults to [`DEFAULT_CONTROLLER_PORT`]), or why it is not one.
pub fn parse_controller_addr(given: &str) -> Result<String, String> {
    let bad = |reason: &str| format!("{given:?}: {reason}");
    let s = given.trim().trim_end_matches('/');
    let s = match s.split_once("://") {
        None => s,
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => rest,
        Some(_) => {
            return Err(bad(
                "the controller needs TLS: write host:port or https://host:port",
            ));
        }
    };
    if s.is_empty() || s.contains('/') {
        return Err(bad("write host:port or https://host:port"));
    }
    let bracketed_v6 = s.starts_with('[') && s.ends_with(']');
    match s.rsplit_once(':') {
        _ if bracketed_v6 => Ok(format!("{s}:{DEFAULT_CONTROLLER_PORT}")),
        None => Ok(format!("{s}:{DEFAULT_CONTROLLER_PORT}")),
        Some((host, port)) if !host.is_empty() && (host.ends_with(']') || !host.contains(':')) => {
            match port.parse::<u16>() {
                Ok(p) if p != 0 => Ok(s.to_owned()),
                _ => Err(bad("invalid port")),
            }
        }
        Some(_) => Err(bad("write IPv6 addresses as [address]:port")),
    }
}

/// Lowercase hex without separators, or an error saying what is wrong.
fn normalize_fingerprint(given: &str) -> Result<String, EnrollError> {
    let hex: String = given
        .trim()
        .chars()
        .filter(|&c| c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(
            "--ca-fingerprint",
            "expected the 64 hex digits of a SHA-256 fingerprint (`shoal-controller ca-fingerprint` prints it)",
        ));
    }
    Ok(hex)
}

/// This machine's host name as `[a-z0-9-]`, or `agent`.
pub fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| sanitize_hostname(&h))
        .unwrap_or_else(|_| "agent".into())
}

/// The first label of `raw`, lowercased, other characters as `-`, at most
/// 63 long; `agent` if nothing is left.
pub fn sanitize_hostname(raw: &str) -> String {
    let label = raw.trim().split('.').next().unwrap_or_default();
    let mapped: String = label
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .take(63)
        .collect();
    let name = mapped.trim_matches('-');
    if name.is_empty() {
        "agent".into()
    } else {
        name.to_owned()
    }
}

fn status_error(addr: &str, status: tonic::Status) -> EnrollError {
    use tonic::Code;
    let message = status.message().to_owned();
    match status.code() {
        Code::PermissionDenied | Code::Unauthenticated => EnrollError::TokenRefused(message),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => EnrollError::Unreachable {
            addr: addr.to_owned(),
            cause: message,
        },
        code => EnrollError::Controller { code, message },
    }
}

/// Checks the controller's answer against our key and the pinned CA, and
/// returns the identity the certificate names.
fn check_response(
    r: &pb::EnrollResponse,
    key_pem: &str,
    pinned: &str,
) -> Result<Identity, EnrollError> {
    let bad =
        |what: &str, e: &dyn std::fmt::Display| EnrollError::BadResponse(format!("{what}: {e}"));
    let ca = CertificateDer::from_pem_slice(r.ca_certificate_pem.as_bytes())
        .map_err(|e| bad("CA certificate", &e))?;
    let presented = fingerprint(&ca);
    if presented != pinned {
        return Err(ControllerTrustError::FingerprintMismatch {
            expected: pinned.to_owned(),
            presented,
        }
        .into());
    }
    let chain = CertificateDer::pem_slice_iter(r.certificate_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("certificate", &e))?;
    let leaf = chain
        .first()
        .ok_or_else(|| EnrollError::BadResponse("no certificate in the answer".into()))?;

    let provider = tls::provider();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| bad("our key", &e))?;
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| bad("our key", &e))?;
    CertifiedKey::new(chain.clone(), signer)
        .keys_match()
        .map_err(|e| bad("the certificate is not for this agent's key", &e))?;

    let mut roots = RootCertStore::empty();
    roots.add(ca).map_err(|e| bad("CA certificate", &e))?;
    let parsed = ParsedCertificate::try_from(leaf).map_err(|e| bad("certificate", &e))?;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &roots,
        &chain[1..],
        UnixTime::now(),
        provider.signature_verification_algorithms.all,
    )
    .map_err(|e| bad("the certificate does not chain to the pinned CA", &e))?;

    let id = parse_identity(leaf).map_err(|e| bad("certificate", &e))?;
    if id.agent_id != r.agent_id {
        return Err(EnrollError::BadResponse(format!(
            "the certificate names agent {:?} but the controller said {:?}",
            id.agent_id, r.agent_id
        )));
    }
    Ok(id)
}

/// Writes every file to a temporary beside it first, then renames them
/// all, so a failure leaves no half-written file. Parent directories are
/// created; `mode` applies on Unix before the file appears.
pub(crate) fn write_files(files: &[(&Path, &str, u32)]) -> Result<(), EnrollError> {
    let write_err = |path: &Path, cause| EnrollError::Write {
        path: path.display().to_string(),
        cause,
    };
    let mut staged = Vec::with_capacity(files.len());
    for &(path, data, mode) in files {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir).map_err(|e| write_err(dir, e))?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| write_err(path, e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(|e| write_err(path, e))?;
        }
        #[cfg(not(unix))]
        let _ = mode;
        tmp.write_all(data.as_bytes())
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| write_err(path, e))?;
        staged.push((tmp, path));
    }
    for (tmp, path) in staged {
        tmp.persist(path).map_err(|e| write_err(path, e.error))?;
    }
    Ok(())
}

// ---- the controller's certificate ------------------------------------------

/// What the controller's certificate must chain to.
#[derive(Debug)]
enum Trust {
    /// A CA in the presented chain with this SHA-256 fingerprint (lowercase
    /// hex): enrollment, before the agent has a CA file.
    Pinned(String),
    /// The agent's CA file, once enrolled.
    Roots(Arc<RootCertStore>),
}

/// Accepts a server whose certificate chains to the trusted CA and carries
/// the `controller` role. The name dialled is ignored. Keeps the reason of
/// its last refusal, since rustls reports it only inside a TLS error.
#[derive(Debug)]
struct ControllerVerifier {
    trust: Trust,
    provider: Arc<CryptoProvider>,
    refusal: Mutex<Option<ControllerTrustError>>,
}

impl ControllerVerifier {
    fn new(trust: Trust) -> Self {
        Self {
            trust,
            provider: tls::provider(),
            refusal: Mutex::new(None),
        }
    }

    /// Why the last certificate was refused, if it was.
    fn refusal(&self) -> Option<ControllerTrustError> {
        self.refusal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), ControllerTrustError> {
        let chain = |e: rustls::Error| ControllerTrustError::Chain(e.to_string());
        let pinned_roots;
        let roots = match &self.trust {
            Trust::Roots(roots) => roots.as_ref(),
            Trust::Pinned(expected) => {
                let presented: Vec<String> = intermediates.iter().map(|c| fingerprint(c)).collect();
                let Some(i) = presented.iter().position(|f| f == expected) else {
                    return Err(ControllerTrustError::FingerprintMismatch {
                        expected: expected.clone(),
                        presented: if presented.is_empty() {
                            "no CA certificate".into()
                        } else {
                            presented.join(", ")
                        },
                    });
                };
                let mut store = RootCertStore::empty();
                store
                    .add(intermediates[i].clone())
                    .map_err(|e| ControllerTrustError::Chain(e.to_string()))?;
                pinned_roots = store;
                &pinned_roots
            }
        };
        let cert = ParsedCertificate::try_from(end_entity).map_err(chain)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )
        .map_err(chain)?;
        let id = parse_identity(end_entity)
            .map_err(|e| ControllerTrustError::Identity(e.to_string()))?;
        if !id.roles.iter().any(|r| r == CONTROLLER_ROLE) {
            return Err(ControllerTrustError::NotController {
                agent_id: id.agent_id,
            });
        }
        Ok(())
    }
}

impl ServerCertVerifier for ControllerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let result = self.check(end_entity, intermediates, now);
        let mut slot = self.refusal.lock().unwrap_or_else(|p| p.into_inner());
        *slot = result.as_ref().err().cloned();
        match result {
            Ok(()) => Ok(ServerCertVerified::assertion()),
            Err(e) => {
                tracing::debug!("refusing the controller's certificate: {e}");
                Err(rustls::Error::General(e.to_string()))
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::pki::{CertificateAuthority, IssueRequest, IssuedCert};
    use tonic::{Request, Response, Status};

    const HOUR: Duration = Duration::from_secs(3600);

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM certificate")
    }

    fn ca(name: &str) -> CertificateAuthority {
        CertificateAuthority::generate(name).expect("CA")
    }

    fn issue(ca: &CertificateAuthority, agent_id: &str, roles: &[&str]) -> IssuedCert {
        let mut req = IssueRequest::agent(agent_id, &[], HOUR);
        req.roles = roles.iter().map(|r| (*r).to_owned()).collect();
        ca.issue(&req).expect("issue")
    }

    fn pinned_to(ca: &CertificateAuthority) -> ControllerVerifier {
        ControllerVerifier::new(Trust::Pinned(fingerprint(&der(ca.cert_pem()))))
    }

    fn verify(
        v: &ControllerVerifier,
        leaf: &IssuedCert,
        intermediates: &[CertificateDer<'static>],
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = ServerName::try_from("controller.shoal").expect("name");
        v.verify_server_cert(
            &der(&leaf.cert_pem),
            intermediates,
            &name,
            &[],
            UnixTime::now(),
        )
    }

    #[test]
    fn enroll_verifier_accepts_the_pinned_controller() {
        let ca = ca("fleet");
        let leaf = issue(&ca, "controller", &[CONTROLLER_ROLE]);
        let v = pinned_to(&ca);
        verify(&v, &leaf, &[der(ca.cert_pem())]).expect("accepted");
        assert!(v.refusal().is_none());
    }

    #[test]
    fn enroll_verifier_refuses_a_wrong_fingerprint_clearly() {
        let (ca, other) = (ca("fleet"), ca("other"));
        let leaf = issue(&ca, "controller", &[CONTROLLER_ROLE]);
        let v = pinned_to(&other);
        let e = verify(&v, &leaf, &[der(ca.cert_pem())]).expect_err("refused");
        assert!(
            e.to_string().contains("does not match the one given"),
            "{e}"
        );
        let refusal = v.refusal().expect("reason kept");
        assert!(
            matches!(&refusal, ControllerTrustError::FingerprintMismatch { presented, .. }
                if *presented == fingerprint(&der(ca.cert_pem()))),
            "{refusal}"
        );
        // No CA in the chain at all.
        let e = verify(&v, &leaf, &[]).expect_err("refused");
        assert!(e.to_string().contains("no CA certificate"), "{e}");
    }

    #[test]
    fn enroll_verifier_refuses_a_leaf_without_the_controller_role() {
        let ca = ca("fleet");
        let leaf = issue(&ca, "lab-1", &[]);
        let v = pinned_to(&ca);
        verify(&v, &leaf, &[der(ca.cert_pem())]).expect_err("refused");
        assert!(matches!(
            v.refusal(),
            Some(ControllerTrustError::NotController { agent_id }) if agent_id == "lab-1"
        ));
    }

    #[test]
    fn enroll_verifier_refuses_a_leaf_from_another_ca_beside_the_pinned_one() {
        // Same CA name, so only the signature tells them apart.
        let (ca, impostor) = (ca("fleet"), ca("fleet"));
        let leaf = issue(&impostor, "controller", &[CONTROLLER_ROLE]);
        let v = pinned_to(&ca);
        verify(&v, &leaf, &[der(ca.cert_pem())]).expect_err("refused");
        assert!(matches!(v.refusal(), Some(ControllerTrustError::Chain(_))));
        // Both CAs presented: the pinned one still does not sign the leaf.
        verify(&v, &leaf, &[der(impostor.cert_pem()), der(ca.cert_pem())]).expect_err("refused");
    }

    #[test]
    fn enroll_verifier_with_roots_needs_the_ca_and_the_role() {
        let (ca, other) = (ca("fleet"), ca("other"));
        let mut roots = RootCertStore::empty();
        roots.add(der(ca.cert_pem())).expect("root");
        let v = ControllerVerifier::new(Trust::Roots(Arc::new(roots)));
        verify(&v, &issue(&ca, "controller", &[CONTROLLER_ROLE]), &[]).expect("accepted");
        verify(&v, &issue(&ca, "lab-1", &[]), &[]).expect_err("not a controller");
        verify(&v, &issue(&other, "controller", &[CONTROLLER_ROLE]), &[]).expect_err("other CA");
    }

    #[test]
    fn enroll_arguments_are_normalized() {
        let fp = "ab".repeat(32);
        let spaced: Vec<String> = (0..32).map(|_| "AB".to_owned()).collect();
        assert_eq!(normalize_fingerprint(&spaced.join(":")).expect("ok"), fp);
        assert_eq!(normalize_fingerprint(&fp.to_uppercase()).expect("ok"), fp);
        for bad in ["", "abc", &"zz".repeat(32), &"ab".repeat(33)] {
            assert_eq!(normalize_fingerprint(bad).expect_err(bad).exit_code(), 78);
        }

        for (given, want) in [
            ("ctl.lan:7800", "ctl.lan:7800"),
            ("https://ctl.lan:9000/", "ctl.lan:9000"),
            ("ctl.lan", "ctl.lan:7800"),
            ("10.0.0.1", "10.0.0.1:7800"),
            ("[fd00::1]:7801", "[fd00::1]:7801"),
            ("[fd00::1]", "[fd00::1]:7800"),
        ] {
            assert_eq!(controller_addr(given).expect(given), want);
        }
        for bad in ["http://ctl:7800", "ctl:0", "ctl:x", "fd00::1", "ctl/x", ""] {
            controller_addr(bad).expect_err(bad);
        }

        assert_eq!(sanitize_hostname("Lab-B_07.example.org\n"), "lab-b-07");
        assert_eq!(sanitize_hostname("--"), "agent");
        assert_eq!(sanitize_hostname(&"x".repeat(80)).len(), 63);
    }

    #[test]
    fn enroll_response_must_be_for_our_key_and_id() {
        let ca = ca("fleet");
        let pinned = fingerprint(&der(ca.cert_pem()));
        let (csr, key) = generate_csr("lab-1").expect("csr");
        let answer = |cert: String, agent_id: &str| pb::EnrollResponse {
            agent_id: agent_id.into(),
            groups: vec!["lab".into()],
            certificate_pem: cert,
            ca_certificate_pem: ca.cert_pem().into(),
        };
        let for_csr = ca
            .issue_for_csr(&csr, &IssueRequest::agent("lab-1", &["lab"], HOUR))
            .expect("issue");
        let id = check_response(&answer(for_csr.clone(), "lab-1"), &key, &pinned).expect("ok");
        assert_eq!(
            (id.agent_id.as_str(), id.groups.as_slice()),
            ("lab-1", &["lab".to_owned()][..])
        );

        let e = check_response(&answer(for_csr, "lab-2"), &key, &pinned).expect_err("id");
        assert!(matches!(e, EnrollError::BadResponse(_)), "{e}");
        let other_key = issue(&ca, "lab-1", &[]).cert_pem;
        let e = check_response(&answer(other_key, "lab-1"), &key, &pinned).expect_err("key");
        assert!(e.to_string().contains("not for this agent's key"), "{e}");
        let wrong_ca = "00".repeat(32);
        let (csr, key) = generate_csr("lab-1").expect("csr");
        let cert = ca
            .issue_for_csr(&csr, &IssueRequest::agent("lab-1", &[], HOUR))
            .expect("issue");
        let e = check_response(&answer(cert, "lab-1"), &key, &wrong_ca).expect_err("ca");
        assert_eq!(e.exit_code(), 77, "{e}");
    }

    // ---- against a stand-in controller over real TLS ----------------------

    #[derive(Debug)]
    struct StandIn {
        ca: Arc<CertificateAuthority>,
    }

    #[tonic::async_trait]
    impl pb::agent_control_server::AgentControl for StandIn {
        async fn enroll(
            &self,
            req: Request<pb::EnrollRequest>,
        ) -> Result<Response<pb::EnrollResponse>, Status> {
            let r = req.into_inner();
            if r.token != "good-token" {
                return Err(Status::permission_denied(
                    "unknown token; ask an admin for a new one",
                ));
            }
            let id = sanitize_hostname(&r.hostname);
            let pem = self
                .ca
                .issue_for_csr(&r.csr_pem, &IssueRequest::agent(&id, &["lab"], HOUR))
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            Ok(Response::new(pb::EnrollResponse {
                agent_id: id,
                groups: vec!["lab".into()],
                certificate_pem: pem,
                ca_certificate_pem: self.ca.cert_pem().into(),
            }))
        }

        async fn renew(
            &self,
            _: Request<pb::RenewRequest>,
        ) -> Result<Response<pb::RenewResponse>, Status> {
            Err(Status::unimplemented("stand-in"))
        }

        type SessionStream = tokio_stream::Empty<Result<pb::ControllerUpdate, Status>>;

        async fn session(
            &self,
            _: Request<tonic::Streaming<pb::AgentReport>>,
        ) -> Result<Response<Self::SessionStream>, Status> {
            Err(Status::unimplemented("stand-in"))
        }

        async fn get_manifest(
            &self,
            _: Request<pb::GetManifestRequest>,
        ) -> Result<Response<pb::GetManifestResponse>, Status> {
            Err(Status::unimplemented("stand-in"))
        }

        async fn search_catalog(
            &self,
            _: Request<pb::SearchCatalogRequest>,
        ) -> Result<Response<pb::SearchCatalogResponse>, Status> {
            Err(Status::unimplemented("stand-in"))
        }
    }

    /// Serves the stand-in with chain [controller leaf, CA]; returns its
    /// address and the token that stops it.
    async fn serve(ca: Arc<CertificateAuthority>) -> (String, tokio_util::sync::CancellationToken) {
        let leaf = issue(&ca, "controller", &[CONTROLLER_ROLE]);
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key");
        let mut cfg = rustls::ServerConfig::builder_with_provider(tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_no_client_auth()
            .with_single_cert(vec![der(&leaf.cert_pem), der(ca.cert_pem())], key)
            .expect("server config");
        cfg.alpn_protocols = vec![tls::ALPN_H2.to_vec()];
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let cancel = tokio_util::sync::CancellationToken::new();
        let tracker = tokio_util::task::TaskTracker::new();
        let incoming = crate::transport::server::tls_incoming(
            listener,
            Arc::new(cfg),
            cancel.clone(),
            &tracker,
        );
        let server = tonic::transport::Server::builder()
            .add_service(pb::agent_control_server::AgentControlServer::new(StandIn {
                ca,
            }))
            .serve_with_incoming_shutdown(incoming, cancel.clone().cancelled_owned());
        tokio::spawn(server);
        (addr, cancel)
    }

    fn options(dir: &Path, controller: &str, token: &str, ca_fingerprint: &str) -> EnrollOptions {
        EnrollOptions {
            controller: controller.into(),
            token: token.into(),
            ca_fingerprint: ca_fingerprint.into(),
            hostname: "Lab-7.example.org".into(),
            out: TlsPaths {
                ca: dir.join("tls/ca.pem"),
                cert: dir.join("tls/agent.pem"),
                key: dir.join("tls/agent.key"),
            },
        }
    }

    #[tokio::test]
    async fn enroll_against_a_stand_in_controller() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Arc::new(ca("fleet"));
        let (addr, stop) = serve(ca.clone()).await;
        let fp = fingerprint(&der(ca.cert_pem())).to_uppercase();

        // A wrong fingerprint: refused with the clear reason, nothing written.
        let e = enroll(&options(dir.path(), &addr, "good-token", &"ab".repeat(32)))
            .await
            .expect_err("wrong fingerprint");
        assert!(
            e.to_string().contains("does not match the one given"),
            "{e}"
        );
        assert_eq!(e.exit_code(), 77);
        assert!(!dir.path().join("tls").exists());

        let e = enroll(&options(dir.path(), &addr, "bad-token", &fp))
            .await
            .expect_err("bad token");
        assert!(matches!(e, EnrollError::TokenRefused(_)), "{e}");
        assert_eq!(e.exit_code(), 77);

        let opts = options(dir.path(), &format!("https://{addr}"), "good-token", &fp);
        let done = enroll(&opts).await.expect("enrolled");
        assert_eq!(
            (done.agent_id.as_str(), done.groups.as_slice()),
            ("lab-7", &["lab".to_owned()][..])
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&opts.out.key)
                .expect("key")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        // The written files make an identity that reaches the controller.
        let identity = TlsIdentity::load(&opts.out).expect("written identity loads");
        assert_eq!(identity.identity.agent_id, "lab-7");
        let config = controller_client_config(&identity).expect("config");
        let (_, server) = Connector::new(config)
            .connect(&addr, None)
            .await
            .expect("connect");
        assert_eq!(server.roles, vec![CONTROLLER_ROLE]);
        stop.cancel();
    }

    #[tokio::test]
    async fn enroll_reports_an_unreachable_controller() {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        drop(listener);
        let e = enroll(&options(dir.path(), &addr, "t", &"ab".repeat(32)))
            .await
            .expect_err("nothing listens");
        assert!(matches!(e, EnrollError::Unreachable { .. }), "{e}");
        assert_eq!(e.exit_code(), 69);
    }
}

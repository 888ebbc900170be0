//! A certificate authority that issues Shoal identities.
//!
//! Used offline by `shoal ca` and online by the controller's enrollment.
//! Certificates are ECDSA P-256, valid for both TLS client and server use
//! (every agent is both), with the identity fields of [`crate::identity`].

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use crate::identity::{AGENT_URI, GROUP_URI, IdentityError, ROLE_URI, validate_label};

/// Certificates start this far in the past so a peer whose clock runs a
/// little behind still accepts a certificate issued a moment ago.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(5 * 60);
/// Default lifetime of a CA certificate.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Why issuing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("certificate authority: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("the operating system's random source failed: {0}")]
    Random(String),
    #[error("validity {0:?} is out of range")]
    Validity(Duration),
}

/// What to put in an issued certificate.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    pub agent_id: String,
    pub groups: Vec<String>,
    pub roles: Vec<String>,
    pub validity: Duration,
    /// Issue already expired (for tests of expiry handling).
    pub backdate: Option<Duration>,
}

impl IssueRequest {
    pub fn agent(agent_id: &str, groups: &[&str], validity: Duration) -> Self {
        Self {
            agent_id: agent_id.into(),
            groups: groups.iter().map(|g| (*g).into()).collect(),
            roles: Vec::new(),
            validity,
            backdate: None,
        }
    }
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The CA: its certificate and signing key.
pub struct CertificateAuthority {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .finish_non_exhaustive()
    }
}

fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut s = [0u8; 16];
    getrandom::fill(&mut s).map_err(|e| PkiError::Random(e.to_string()))?;
    s[0] &= 0x7f; // positive
    s[0] |= 0x01; // and no leading zero byte to strip
    Ok(SerialNumber::from_slice(&s))
}

fn window(
    validity: Duration,
    backdate: Option<Duration>,
) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
    let now = OffsetDateTime::now_utc();
    let start = now - CLOCK_SKEW_ALLOWANCE - backdate.unwrap_or_default();
    let end = start
        .checked_add(
            time::Duration::try_from(validity + CLOCK_SKEW_ALLOWANCE)
                .map_err(|_| PkiError::Validity(validity))?,
        )
        .ok_or(PkiError::Validity(validity))?;
    Ok((start, end))
}

impl CertificateAuthority {
    /// A new self-signed CA named `name`.
    pub fn generate(name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, "Shoal");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial()?);
        (params.not_before, params.not_after) = window(CA_VALIDITY, None)?;
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its certificate and key (PEM).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            issuer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    fn params(req: &IssueRequest) -> Result<CertificateParams, PkiError> {
        validate_label("agent id", &req.agent_id)?;
        let mut sans = vec![SanType::URI(
            format!("{AGENT_URI}{}", req.agent_id).try_into()?,
        )];
        for g in &req.groups {
            validate_label("group", g)?;
            sans.push(SanType::URI(format!("{GROUP_URI}{g}").try_into()?));
        }
        for r in &req.roles {
            validate_label("role", r)?;
            sans.push(SanType::URI(format!("{ROLE_URI}{r}").try_into()?));
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, req.agent_id.as_str());
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        (params.not_before, params.not_after) = window(req.validity, req.backdate)?;
        Ok(params)
    }

    /// Issues a certificate with a freshly generated key (offline CA use).
    pub fn issue(&self, req: &IssueRequest) -> Result<IssuedCert, PkiError> {
        let key = KeyPair::generate()?;
        let cert = Self::params(req)?.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a certificate for the key in a PEM CSR. Only the CSR's public
    /// key is used: names, validity and usages are the CA's decision.
    pub fn issue_for_csr(&self, csr_pem: &str, req: &IssueRequest) -> Result<String, PkiError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        csr.params = Self::params(req)?;
        Ok(csr.signed_by(&self.issuer)?.pem())
    }
}

/// A new key pair and a CSR for it, both PEM: the agent side of enrollment.
pub fn generate_csr(agent_hint: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, agent_hint);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::parse_identity;

    fn der(pem: &str) -> Vec<u8> {
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64_decode(&b64)
    }

    // Tiny decoder so the test needs no extra crate.
    fn base64_decode(s: &str) -> Vec<u8> {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        let (mut buf, mut bits) = (0u32, 0);
        for c in s.bytes().filter(|&c| c != b'=') {
            let v = T.iter().position(|&t| t == c).expect("base64") as u32;
            buf = (buf << 6) | v;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((buf >> bits) as u8);
            }
        }
        out
    }

    #[test]
    fn issued_certificates_carry_the_identity() {
        let ca = CertificateAuthority::generate("test CA").expect("ca");
        let mut req = IssueRequest::agent(
            "lab-b-07",
            &["lab-b", "all-desktops"],
            Duration::from_secs(3600),
        );
        req.roles = vec!["viewer".into()];
        let issued = ca.issue(&req).expect("issue");
        let id = parse_identity(&der(&issued.cert_pem)).expect("identity");
        assert_eq!(id.agent_id, "lab-b-07");
        assert_eq!(id.groups, vec!["all-desktops", "lab-b"]);
        assert_eq!(id.roles, vec!["viewer"]);
        assert!(id.not_after_unix - id.not_before_unix >= 3600);
        assert_eq!(id.fingerprint.len(), 64);

        // Reloaded CA issues from CSRs, overriding what the CSR asks for.
        let ca2 = CertificateAuthority::from_pem(ca.cert_pem(), ca.key_pem()).expect("load");
        let (csr, _key) = generate_csr("whatever").expect("csr");
        let pem = ca2
            .issue_for_csr(
                &csr,
                &IssueRequest::agent("a1", &["g"], Duration::from_secs(60)),
            )
            .expect("issue");
        let id = parse_identity(&der(&pem)).expect("identity");
        assert_eq!(
            (id.agent_id.as_str(), id.groups.as_slice()),
            ("a1", &["g".to_owned()][..])
        );
    }

    #[test]
    fn refuses_bad_names() {
        let ca = CertificateAuthority::generate("test CA").expect("ca");
        for bad in ["", "UPPER", "-x", "a b", &"x".repeat(64)] {
            let req = IssueRequest::agent(bad, &[], Duration::from_secs(60));
            assert!(ca.issue(&req).is_err(), "{bad:?}");
        }
        let req = IssueRequest::agent("ok", &["Bad Group"], Duration::from_secs(60));
        assert!(ca.issue(&req).is_err());
    }
}

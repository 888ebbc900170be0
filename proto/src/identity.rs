//! Who a certificate names: agent id, groups and roles.
//!
//! Identities travel in X.509 certificates issued by the fleet's CA (the
//! controller, or an offline CA made with `shoal ca init`). The subject CN
//! is the agent id; subject-alternative-name URIs carry the rest:
//! `urn:shoal:agent:<id>`, `urn:shoal:group:<group>` (one per group) and
//! `urn:shoal:role:<role>` for admin identities. Ids, groups and roles are
//! DNS-label-like: 1–63 of `[a-z0-9-]`, not starting or ending with `-`.

use sha2::Digest;

pub const AGENT_URI: &str = "urn:shoal:agent:";
pub const GROUP_URI: &str = "urn:shoal:group:";
pub const ROLE_URI: &str = "urn:shoal:role:";
/// The role that marks the controller's server certificate; clients of
/// the controller accept no other.
pub const CONTROLLER_ROLE: &str = "controller";

/// What a certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Identity {
    pub agent_id: String,
    pub groups: Vec<String>,
    pub roles: Vec<String>,
    /// Serial number, lowercase hex.
    pub serial: String,
    pub not_before_unix: i64,
    pub not_after_unix: i64,
    /// SHA-256 of the DER certificate, lowercase hex.
    pub fingerprint: String,
}

impl Identity {
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

/// Why a certificate does not carry a usable identity.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error("certificate cannot be parsed: {0}")]
    Parse(String),
    #[error("certificate names no Shoal agent (no {AGENT_URI}<id> subject alternative name)")]
    NoAgentId,
    #[error("certificate names several agents")]
    SeveralAgentIds,
    #[error(
        "{what} {value:?} is not valid: use 1-63 of a-z, 0-9 and '-', not starting or ending with '-'"
    )]
    BadName { what: &'static str, value: String },
}

/// Checks an agent id, group or role name.
pub fn validate_label(what: &'static str, value: &str) -> Result<(), IdentityError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && !value.starts_with('-')
        && !value.ends_with('-')
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(IdentityError::BadName {
            what,
            value: value.to_owned(),
        })
    }
}

/// SHA-256 fingerprint of a DER certificate, lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(der))
}

/// Reads the identity from a DER certificate. Does not check validity or
/// the issuer: TLS verification does that before this is called.
pub fn parse_identity(der: &[u8]) -> Result<Identity, IdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| IdentityError::Parse(e.to_string()))?;
    let mut agent = None;
    let mut groups = Vec::new();
    let mut roles = Vec::new();
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::Parse(e.to_string()))?;
    if let Some(san) = san {
        for name in &san.value.general_names {
            let x509_parser::extensions::GeneralName::URI(uri) = name else {
                continue;
            };
            if let Some(id) = uri.strip_prefix(AGENT_URI) {
                validate_label("agent id", id)?;
                if agent.replace(id.to_owned()).is_some() {
                    return Err(IdentityError::SeveralAgentIds);
                }
            } else if let Some(g) = uri.strip_prefix(GROUP_URI) {
                validate_label("group", g)?;
                groups.push(g.to_owned());
            } else if let Some(r) = uri.strip_prefix(ROLE_URI) {
                validate_label("role", r)?;
                roles.push(r.to_owned());
            }
        }
    }
    groups.sort();
    groups.dedup();
    roles.sort();
    roles.dedup();
    Ok(Identity {
        agent_id: agent.ok_or(IdentityError::NoAgentId)?,
        groups,
        roles,
        serial: hex::encode(cert.raw_serial()),
        not_before_unix: cert.validity().not_before.timestamp(),
        not_after_unix: cert.validity().not_after.timestamp(),
        fingerprint: fingerprint(der),
    })
}

//! The fleet CA, held by the controller: created on first start (or
//! imported from files named in the configuration), kept under
//! `<data_dir>/ca/`. It issues the controller's own server certificate
//! (role `controller`, which clients check), agents' certificates at
//! enrollment, and on first start an admin identity under
//! `<data_dir>/admin/` so the operator on this host can run admin
//! commands.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use shoal_proto::identity::{CONTROLLER_ROLE, fingerprint};
use shoal_proto::pki::{CertificateAuthority, IssueRequest, PkiError};

use crate::config::CaImport;

/// Validity of the controller's server certificate, reissued each start.
const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(365 * 86_400);

/// Why the CA could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error(transparent)]
    Pki(#[from] PkiError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |cause| CaError::Io {
        path: path.to_owned(),
        cause,
    }
}

/// Writes a file readable by its owner only (keys) or by all (certs).
fn write_file(path: &Path, data: &str, private: bool) -> Result<(), CaError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).map_err(io(&tmp))?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io(&tmp))?;
    }
    #[cfg(not(unix))]
    let _ = private;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// A certificate chain and key for TLS.
#[derive(Debug)]
pub struct ServerIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// The controller's CA and what it derives.
#[derive(Debug)]
pub struct FleetCa {
    ca: CertificateAuthority,
    ca_der: CertificateDer<'static>,
}

impl FleetCa {
    /// Loads the CA from `<data_dir>/ca/`, or makes it: imported from
    /// `import` if given, generated otherwise.
    pub fn open(data_dir: &Path, import: Option<&CaImport>) -> Result<Self, CaError> {
        let (cert_path, key_path) = (data_dir.join("ca/ca.pem"), data_dir.join("ca/ca.key"));
        if !cert_path.exists() {
            let ca = match import {
                Some(i) => {
                    let cert = std::fs::read_to_string(&i.cert).map_err(io(&i.cert))?;
                    let key = std::fs::read_to_string(&i.key).map_err(io(&i.key))?;
                    tracing::info!(cert = %i.cert.display(), "importing the fleet CA");
                    CertificateAuthority::from_pem(&cert, &key)?
                }
                None => {
                    tracing::info!("creating the fleet CA");
                    CertificateAuthority::generate("Shoal fleet CA")?
                }
            };
            write_file(&key_path, ca.key_pem(), true)?;
            write_file(&cert_path, ca.cert_pem(), false)?;
        }
        let cert = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        let key = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        let ca = CertificateAuthority::from_pem(&cert, &key)?;
        let ca_der = CertificateDer::from_pem_slice(cert.as_bytes()).map_err(|e| CaError::Pem {
            path: cert_path.clone(),
            reason: e.to_string(),
        })?;
        Ok(Self { ca, ca_der })
    }

    pub fn cert_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// SHA-256 of the CA certificate: what `shoal-agent enroll
    /// --ca-fingerprint` pins.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.ca_der)
    }

    /// A fresh server certificate for the controller, chained to the CA.
    pub fn server_identity(&self) -> Result<ServerIdentity, CaError> {
        let mut req = IssueRequest::agent(CONTROLLER_ROLE, &[], SERVER_CERT_VALIDITY);
        req.roles = vec![CONTROLLER_ROLE.into()];
        let issued = self.ca.issue(&req)?;
        let pem_err = |reason: String| CaError::Pem {
            path: PathBuf::from("<controller certificate>"),
            reason,
        };
        let leaf = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes())
            .map_err(|e| pem_err(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())
            .map_err(|e| pem_err(e.to_string()))?;
        Ok(ServerIdentity {
            chain: vec![leaf, self.ca_der.clone()],
            key,
        })
    }

    /// Issues a certificate for the key in `csr_pem`.
    pub fn issue_for_csr(&self, csr_pem: &str, req: &IssueRequest) -> Result<String, PkiError> {
        self.ca.issue_for_csr(csr_pem, req)
    }

    /// Writes an admin identity (`ca.pem`, `<name>.pem`, `<name>.key`) to
    /// `dir`.
    pub fn write_admin(
        &self,
        dir: &Path,
        name: &str,
        roles: &[String],
        validity: Duration,
    ) -> Result<(), CaError> {
        let mut req = IssueRequest::agent(name, &[], validity);
        req.roles = roles.to_vec();
        let issued = self.ca.issue(&req)?;
        write_file(&dir.join("ca.pem"), self.ca.cert_pem(), false)?;
        write_file(&dir.join(format!("{name}.key")), &issued.key_pem, true)?;
        write_file(&dir.join(format!("{name}.pem")), &issued.cert_pem, false)
    }

    /// On first start, the admin identity for this host's operator.
    pub fn bootstrap_admin(&self, data_dir: &Path, validity: Duration) -> Result<(), CaError> {
        let dir = data_dir.join("admin");
        if dir.join("admin.pem").exists() {
            return Ok(());
        }
        self.write_admin(&dir, "admin", &["admin".into()], validity)?;
        tracing::info!(dir = %dir.display(), "wrote the first admin identity");
        Ok(())
    }
}

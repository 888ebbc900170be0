//! `shoal ca`: an offline certificate authority for fleets without a
//! controller (and for tests): create it, issue agent certificates.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;
use serde_json::json;
use shoal_proto::pki::{CertificateAuthority, IssueRequest};
use shoal_proto::units::parse_duration;

use super::exit::{self, CliError};
use super::key::write_atomically;
use super::output::Output;

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a CA: DIR/ca.pem (certificate, give it to every agent) and
    /// DIR/ca.key (secret, mode 0600).
    Init {
        #[arg(long, short)]
        out: PathBuf,
        /// Name in the CA certificate.
        #[arg(long, default_value = "Shoal offline CA")]
        name: String,
        #[arg(long)]
        force: bool,
    },
    /// Issue an agent certificate: PREFIX.pem and PREFIX.key (mode 0600).
    Issue {
        /// The CA directory made by `shoal ca init`.
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        agent_id: String,
        /// Group the agent belongs to; repeatable.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Role for admin identities (admin, publisher, viewer); repeatable.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// How long the certificate is valid.
        #[arg(long, default_value = "365d", value_parser = |s: &str| parse_duration(s).map_err(|e| e.to_string()))]
        validity: Duration,
        /// Path prefix of the certificate and key [default: ./AGENT_ID].
        #[arg(long, short)]
        out: Option<PathBuf>,
        #[arg(long)]
        force: bool,
    },
}

fn refuse_existing(paths: &[&Path], force: bool) -> Result<(), CliError> {
    for p in paths {
        if p.exists() && !force {
            return Err(CliError::new(
                exit::CANT_CREATE,
                anyhow::anyhow!("{} exists; pass --force to overwrite it", p.display()),
            ));
        }
    }
    Ok(())
}

fn pki_err(e: shoal_proto::pki::PkiError) -> CliError {
    let code = match e {
        shoal_proto::pki::PkiError::Identity(_) => exit::USAGE,
        _ => exit::SOFTWARE,
    };
    CliError::new(code, e)
}

pub fn run(cmd: CaCommand, out: Output) -> Result<u8, CliError> {
    match cmd {
        CaCommand::Init {
            out: dir,
            name,
            force,
        } => {
            let cert = dir.join("ca.pem");
            let key = dir.join("ca.key");
            refuse_existing(&[&cert, &key], force)?;
            let ca = CertificateAuthority::generate(&name).map_err(pki_err)?;
            write_atomically(&key, ca.key_pem().as_bytes(), 0o600)?;
            write_atomically(&cert, ca.cert_pem().as_bytes(), 0o644)?;
            if out.json {
                out.json(&json!({"ca_cert": cert, "ca_key": key}));
            } else {
                println!("created CA {name:?}");
                println!(
                    "  certificate  {}  (install on every agent as tls.ca)",
                    cert.display()
                );
                println!(
                    "  secret key   {}  (keep offline; it issues identities)",
                    key.display()
                );
            }
            Ok(exit::OK)
        }
        CaCommand::Issue {
            ca,
            agent_id,
            groups,
            roles,
            validity,
            out: prefix,
            force,
        } => {
            let read = |p: PathBuf| {
                std::fs::read_to_string(&p)
                    .map_err(|e| CliError::io(e, format!("reading {}", p.display())))
            };
            let authority = CertificateAuthority::from_pem(
                &read(ca.join("ca.pem"))?,
                &read(ca.join("ca.key"))?,
            )
            .map_err(|e| {
                CliError::new(exit::DATA, e).context(format!("loading the CA in {}", ca.display()))
            })?;
            let prefix = prefix.unwrap_or_else(|| PathBuf::from(&agent_id));
            let mut cert_path = prefix.as_os_str().to_owned();
            cert_path.push(".pem");
            let mut key_path = prefix.as_os_str().to_owned();
            key_path.push(".key");
            let (cert_path, key_path) = (PathBuf::from(cert_path), PathBuf::from(key_path));
            refuse_existing(&[&cert_path, &key_path], force)?;
            let issued = authority
                .issue(&IssueRequest {
                    agent_id: agent_id.clone(),
                    groups: groups.clone(),
                    roles,
                    validity,
                    backdate: None,
                })
                .map_err(pki_err)?;
            write_atomically(&key_path, issued.key_pem.as_bytes(), 0o600)?;
            write_atomically(&cert_path, issued.cert_pem.as_bytes(), 0o644)?;
            if out.json {
                out.json(&json!({"agent_id": agent_id, "groups": groups, "cert": cert_path, "key": key_path}));
            } else {
                println!(
                    "issued {agent_id} (groups: {})",
                    if groups.is_empty() {
                        "none".into()
                    } else {
                        groups.join(", ")
                    }
                );
                println!("  certificate  {}", cert_path.display());
                println!("  key          {}", key_path.display());
            }
            Ok(exit::OK)
        }
    }
}

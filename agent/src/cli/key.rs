//! `shoal key`: publisher signing keys.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde_json::json;
use shoal_proto::{PublicKey, PublisherKey};

use super::exit::{self, CliError};
use super::output::Output;

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Generate a publisher key pair: PREFIX.key (secret, mode 0600) and
    /// PREFIX.pub (public, one `ed25519:<hex>` line for trust lists).
    Generate {
        /// Path prefix of the two files, e.g. `keys/it-publisher`.
        #[arg(long, short)]
        out: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Show the key id and public key of a .key or .pub file.
    Show { file: PathBuf },
}

pub fn run(cmd: KeyCommand, out: Output) -> Result<u8, CliError> {
    match cmd {
        KeyCommand::Generate { out: prefix, force } => generate(&prefix, force, out),
        KeyCommand::Show { file } => {
            let public = load_public(&file.display().to_string())?;
            if out.json {
                out.json(&json!({"key_id": public.key_id(), "public_key": public.to_string()}));
            } else {
                println!("key id      {}", public.key_id());
                println!("public key  {public}");
            }
            Ok(exit::OK)
        }
    }
}

fn with_ext(prefix: &Path, ext: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

fn generate(prefix: &Path, force: bool, out: Output) -> Result<u8, CliError> {
    let secret_path = with_ext(prefix, "key");
    let public_path = with_ext(prefix, "pub");
    for p in [&secret_path, &public_path] {
        if p.exists() && !force {
            return Err(CliError::new(
                exit::CANT_CREATE,
                anyhow::anyhow!("{} exists; pass --force to overwrite it", p.display()),
            ));
        }
    }
    let key = PublisherKey::generate()?;
    let public = key.public();
    write_atomically(&secret_path, key.to_pem()?.as_bytes(), 0o600)?;
    write_atomically(&public_path, format!("{public}\n").as_bytes(), 0o644)?;
    if out.json {
        out.json(&json!({
            "key_id": public.key_id(),
            "public_key": public.to_string(),
            "secret_key_path": secret_path,
            "public_key_path": public_path,
        }));
    } else {
        println!("generated publisher key {}", public.key_id());
        println!(
            "  secret  {}  (keep it safe: it signs packages)",
            secret_path.display()
        );
        println!(
            "  public  {}  (give it to agents as a trusted publisher)",
            public_path.display()
        );
        println!("  {public}");
    }
    Ok(exit::OK)
}

/// Writes atomically (a temporary file in the same directory, then
/// rename) with Unix permission bits `mode`, set before the file appears.
pub(crate) fn write_atomically(path: &Path, data: &[u8], mode: u32) -> Result<(), CliError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::io(e, format!("creating {}", dir.display())))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| CliError::io(e, format!("writing in {}", dir.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| CliError::io(e, format!("writing {}", path.display())))?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    tmp.write_all(data)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| CliError::io(e, format!("writing {}", path.display())))?;
    tmp.persist(path)
        .map_err(|e| CliError::io(e.error, format!("writing {}", path.display())))?;
    Ok(())
}

/// A public key given as `ed25519:<hex>`, or a file holding one, or a
/// secret key file (its public half is used).
pub fn load_public(arg: &str) -> Result<PublicKey, CliError> {
    if arg.starts_with("ed25519:") {
        return Ok(arg.parse()?);
    }
    let path = Path::new(arg);
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::io(e, format!("reading key {}", path.display())))?;
    let trimmed = text.trim();
    if trimmed.starts_with("ed25519:") {
        return Ok(trimmed.parse()?);
    }
    PublisherKey::from_pem(&text)
        .map(|k| k.public())
        .map_err(|e| CliError::from(e).context(format!("{} holds no Ed25519 key", path.display())))
}

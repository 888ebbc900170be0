//! Backups: one file holding a consistent copy of the controller's state
//! (every sled tree, copied while writers wait) and its CA, and the
//! restore that rebuilds a data directory from it.
//!
//! The format is JSON lines, so a backup can be inspected: a header, one
//! line per record (`tree`, hex `key`, hex `value`), one per CA file, and a
//! last line with the BLAKE3 of everything before it. It contains the CA's
//! private key: keep it like the key itself.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::state::{State, StateError, Trees};

const FORMAT: &str = "shoal-controller-backup";
const VERSION: u32 = 1;
/// Files of the data directory a backup carries, with whether they are
/// private.
const FILES: [(&str, bool); 2] = [("ca/ca.pem", false), ("ca/ca.key", true)];

/// Why a backup or restore failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("not a Shoal controller backup, or a damaged one: {0}")]
    Invalid(String),
    #[error("{0} already holds controller state; restore into an empty directory")]
    NotEmpty(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |cause| BackupError::Io {
        path: path.to_owned(),
        cause,
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Line {
    Header {
        format: String,
        version: u32,
        created_unix_ms: i64,
    },
    Record {
        tree: String,
        key: String,
        value: String,
    },
    File {
        file: String,
        data: String,
    },
    End {
        blake3: String,
    },
}

fn push(out: &mut Vec<u8>, line: &Line) {
    // Plain structs of strings: serialising cannot fail.
    let _ = serde_json::to_writer(&mut *out, line);
    out.push(b'\n');
}

/// A backup of `state` and the CA under `data_dir`.
pub async fn create(state: &State, data_dir: &Path) -> Result<Vec<u8>, BackupError> {
    let mut out = Vec::new();
    push(
        &mut out,
        &Line::Header {
            format: FORMAT.into(),
            version: VERSION,
            created_unix_ms: crate::now_ms(),
        },
    );
    for (tree, kvs) in state.snapshot().await? {
        for (k, v) in kvs {
            push(
                &mut out,
                &Line::Record {
                    tree: tree.clone(),
                    key: hex::encode(k),
                    value: hex::encode(v),
                },
            );
        }
    }
    for (name, _) in FILES {
        let path = data_dir.join(name);
        let data = std::fs::read(&path).map_err(io(&path))?;
        push(
            &mut out,
            &Line::File {
                file: name.into(),
                data: hex::encode(data),
            },
        );
    }
    let sum = blake3::hash(&out).to_hex().to_string();
    push(&mut out, &Line::End { blake3: sum });
    Ok(out)
}

/// What a restore rebuilt.
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    pub records: usize,
    pub trees: usize,
    pub created_unix_ms: i64,
}

/// Rebuilds `data_dir` (which must hold no state yet) from `backup`.
pub fn restore(backup: &[u8], data_dir: &Path) -> Result<Restored, BackupError> {
    let invalid = |m: String| BackupError::Invalid(m);
    let body_end = backup
        .strip_suffix(b"\n")
        .and_then(|b| b.iter().rposition(|&c| c == b'\n'))
        .map(|i| i + 1)
        .ok_or_else(|| invalid("no checksum line".into()))?;
    let (body, last) = backup.split_at(body_end);
    match serde_json::from_slice::<Line>(last) {
        Ok(Line::End { blake3: sum }) if sum == blake3::hash(body).to_hex().as_str() => {}
        Ok(Line::End { .. }) => return Err(invalid("checksum mismatch".into())),
        _ => return Err(invalid("no checksum line".into())),
    }
    let state_dir = data_dir.join("state");
    if state_dir.exists() {
        return Err(BackupError::NotEmpty(data_dir.to_owned()));
    }
    let mut trees: Trees = Vec::new();
    let mut files = Vec::new();
    let mut created = None;
    let mut records = 0;
    for (n, line) in body
        .split(|&c| c == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        let parsed: Line =
            serde_json::from_slice(line).map_err(|e| invalid(format!("line {}: {e}", n + 1)))?;
        let unhex = |s: &str| hex::decode(s).map_err(|e| invalid(format!("line {}: {e}", n + 1)));
        match parsed {
            Line::Header {
                format,
                version,
                created_unix_ms,
            } if n == 0 => {
                if format != FORMAT || version != VERSION {
                    return Err(invalid(format!(
                        "{format} v{version}; this controller reads {FORMAT} v{VERSION}"
                    )));
                }
                created = Some(created_unix_ms);
            }
            _ if n == 0 => return Err(invalid("no header".into())),
            Line::Record { tree, key, value } => {
                let kv = (unhex(&key)?, unhex(&value)?);
                match trees.last_mut() {
                    Some((t, kvs)) if *t == tree => kvs.push(kv),
                    _ => trees.push((tree, vec![kv])),
                }
                records += 1;
            }
            Line::File { file, data } => {
                let private = FILES
                    .iter()
                    .find(|(f, _)| *f == file)
                    .map(|(_, p)| *p)
                    .ok_or_else(|| invalid(format!("line {}: unexpected file {file:?}", n + 1)))?;
                files.push((file, unhex(&data)?, private));
            }
            Line::Header { .. } | Line::End { .. } => {
                return Err(invalid(format!("line {}: out of place", n + 1)));
            }
        }
    }
    if files.len() != FILES.len() {
        return Err(invalid("the CA files are missing".into()));
    }
    for (file, data, private) in files {
        let path = data_dir.join(file);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let mut f = open_new(&path, private).map_err(io(&path))?;
        f.write_all(&data).map_err(io(&path))?;
        f.sync_all().map_err(io(&path))?;
    }
    State::create_from(&state_dir, &trees)?;
    Ok(Restored {
        records,
        trees: trees.len(),
        created_unix_ms: created.unwrap_or_default(),
    })
}

fn open_new(path: &Path, private: bool) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    o.open(path)
}

//! The last revocations, roster, policy, package restrictions and
//! withdrawals from the controller, kept under
//! `<data_dir>/controller/` as protobuf so a restart applies them before
//! the controller is reachable again. Each file is replaced atomically.

use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message;
use shoal_proto::pb;

/// Directory under the data directory.
pub const DIR: &str = "controller";
pub const REVOCATIONS_FILE: &str = "revocations.pb";
pub const ROSTER_FILE: &str = "roster.pb";
pub const POLICY_FILE: &str = "policy.pb";
pub const ACLS_FILE: &str = "acls.pb";
pub const WITHDRAWALS_FILE: &str = "withdrawals.pb";

/// Why a saved message could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PersistError {
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: not a valid saved message: {cause}")]
    Decode {
        path: PathBuf,
        cause: prost::DecodeError,
    },
}

/// What was saved; `None` where nothing was (or it was unreadable, which
/// is logged).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Saved {
    pub revocations: Option<pb::Revocations>,
    pub roster: Option<pb::Roster>,
    pub policy: Option<pb::Policy>,
    pub acls: Option<pb::PackageAcls>,
    pub withdrawals: Option<pb::Withdrawals>,
}

pub fn path(data_dir: &Path, file: &str) -> PathBuf {
    data_dir.join(DIR).join(file)
}

/// Writes `msg` to `<data_dir>/controller/<file>`: a temporary file beside
/// it, synced, then renamed over it.
pub fn save(data_dir: &Path, file: &str, msg: &impl Message) -> Result<(), PersistError> {
    let target = path(data_dir, file);
    let io = |cause| PersistError::Io {
        path: target.clone(),
        cause,
    };
    let dir = data_dir.join(DIR);
    std::fs::create_dir_all(&dir).map_err(io)?;
    let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(io)?;
    tmp.write_all(&msg.encode_to_vec())
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(io)?;
    tmp.persist(&target).map_err(|e| io(e.error))?;
    Ok(())
}

/// Reads `<data_dir>/controller/<file>`; `Ok(None)` if it does not exist.
pub fn load<M: Message + Default>(data_dir: &Path, file: &str) -> Result<Option<M>, PersistError> {
    let target = path(data_dir, file);
    match std::fs::read(&target) {
        Ok(bytes) => M::decode(bytes.as_slice())
            .map(Some)
            .map_err(|cause| PersistError::Decode {
                path: target,
                cause,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(cause) => Err(PersistError::Io {
            path: target,
            cause,
        }),
    }
}

/// Everything saved; an unreadable file is logged and treated as absent.
pub fn load_all(data_dir: &Path) -> Saved {
    fn or_warn<T>(r: Result<Option<T>, PersistError>) -> Option<T> {
        r.unwrap_or_else(|e| {
            tracing::warn!("ignoring saved controller state: {e}");
            None
        })
    }
    Saved {
        revocations: or_warn(load(data_dir, REVOCATIONS_FILE)),
        roster: or_warn(load(data_dir, ROSTER_FILE)),
        policy: or_warn(load(data_dir, POLICY_FILE)),
        acls: or_warn(load(data_dir, ACLS_FILE)),
        withdrawals: or_warn(load(data_dir, WITHDRAWALS_FILE)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_replace() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load_all(dir.path()), Saved::default(), "nothing saved yet");

        let r = pb::Revocations {
            serials: vec!["0aff".into()],
            agent_ids: vec!["lab-3".into()],
        };
        let roster = pb::Roster {
            peers: vec![pb::RosterPeer {
                agent_id: "a".into(),
                addrs: vec!["10.0.0.2:7400".into()],
                cert_fingerprint: "ab".repeat(32),
                groups: vec!["lab".into()],
            }],
        };
        save(dir.path(), REVOCATIONS_FILE, &r).expect("save");
        save(dir.path(), ROSTER_FILE, &roster).expect("save");
        let saved = load_all(dir.path());
        assert_eq!(saved.revocations.as_ref(), Some(&r));
        assert_eq!(saved.roster.as_ref(), Some(&roster));

        // Replaced, not appended; no temporary files left behind.
        save(dir.path(), REVOCATIONS_FILE, &pb::Revocations::default()).expect("save");
        assert_eq!(
            load_all(dir.path()).revocations,
            Some(pb::Revocations::default())
        );
        let files = std::fs::read_dir(dir.path().join(DIR))
            .expect("dir")
            .count();
        assert_eq!(files, 2);
    }

    #[test]
    fn a_corrupt_file_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join(DIR)).expect("mkdir");
        std::fs::write(path(dir.path(), ROSTER_FILE), b"\xff\xff\xff").expect("write");
        assert!(matches!(
            load::<pb::Roster>(dir.path(), ROSTER_FILE),
            Err(PersistError::Decode { .. })
        ));
        assert_eq!(load_all(dir.path()).roster, None);
    }
}

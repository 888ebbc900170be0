//! Property tests over arbitrary and mutated bytes: decoding and
//! validation never panic, and whatever is accepted re-encodes to the same
//! bytes (one manifest, one content id).

use std::collections::BTreeMap;

use proptest::prelude::*;
use shoal_proto::manifest::{ChunkRef, ChunkingSpec, EntryKind, FileEntry};
use shoal_proto::{Manifest, SignedManifest, TrustedKeys};

fn valid_bytes() -> Vec<u8> {
    let files = vec![
        FileEntry {
            path: "a".into(),
            kind: EntryKind::Dir,
            mode: 0o755,
        },
        FileEntry {
            path: "a/f".into(),
            kind: EntryKind::File { size: 9 },
            mode: 0o644,
        },
        FileEntry {
            path: "a/l".into(),
            kind: EntryKind::Symlink { target: "f".into() },
            mode: 0o777,
        },
    ];
    let chunks = vec![
        ChunkRef {
            file: 1,
            offset: 0,
            length: 5,
            hash: blake3::hash(b"1"),
        },
        ChunkRef {
            file: 1,
            offset: 5,
            length: 4,
            hash: blake3::hash(b"2"),
        },
    ];
    Manifest {
        name: "n".into(),
        version: "1".into(),
        created_unix_ms: 1,
        publisher_key_id: "0123456789abcdef".into(),
        chunking: ChunkingSpec::Cdc {
            min: 1,
            avg: 4,
            max: 16,
        },
        total_size: 9,
        files,
        chunks,
        labels: BTreeMap::from([("k".into(), "v".into())]),
    }
    .encode()
    .expect("valid")
    .to_vec()
}

fn check(bytes: &[u8]) {
    if let Ok(m) = Manifest::decode(bytes) {
        let again = m.encode().expect("accepted manifests re-encode");
        assert_eq!(&again[..], bytes);
    }
    if let Ok(s) = SignedManifest::decode(bytes) {
        let _ = s.verify(&TrustedKeys::new());
        let _ = s.manifest_unverified();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check(&bytes);
    }

    #[test]
    fn mutated_manifests_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = valid_bytes();
        for (at, v) in edits {
            let i = at.index(bytes.len());
            bytes[i] = v;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        check(&bytes);
    }
}

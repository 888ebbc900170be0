//! Every malformed manifest is refused with an error that says what and where.

use std::collections::BTreeMap;

use shoal_proto::manifest::{ChunkRef, ChunkingSpec, EntryKind, FileEntry};
use shoal_proto::{
    Manifest, ManifestError, PublisherKey, SignedManifest, TrustedKeys, VerifyError,
};

fn key() -> PublisherKey {
    PublisherKey::generate().expect("random source")
}

fn file(path: &str, size: u64) -> FileEntry {
    FileEntry {
        path: path.into(),
        kind: EntryKind::File { size },
        mode: 0o644,
    }
}

fn dir(path: &str) -> FileEntry {
    FileEntry {
        path: path.into(),
        kind: EntryKind::Dir,
        mode: 0o755,
    }
}

fn link(path: &str, target: &str) -> FileEntry {
    FileEntry {
        path: path.into(),
        kind: EntryKind::Symlink {
            target: target.into(),
        },
        mode: 0o777,
    }
}

fn chunk(file: u32, offset: u64, length: u32) -> ChunkRef {
    ChunkRef {
        file,
        offset,
        length,
        hash: blake3::hash(&offset.to_le_bytes()),
    }
}

/// A valid manifest: a dir, a 10-byte file in two chunks, an empty file, a
/// symlink.
fn sample(k: &PublisherKey) -> Manifest {
    Manifest {
        name: "labs/cs101-week3".into(),
        version: "1".into(),
        created_unix_ms: 1_700_000_000_000,
        publisher_key_id: k.public().key_id().to_string(),
        chunking: ChunkingSpec::Fixed { size: 6 },
        total_size: 10,
        files: vec![
            dir("d"),
            file("d/a.bin", 10),
            file("d/empty", 0),
            link("d/l", "a.bin"),
        ],
        chunks: vec![chunk(1, 0, 6), chunk(1, 6, 4)],
        labels: BTreeMap::from([("course".into(), "cs101".into())]),
    }
}

fn refused(m: &Manifest) -> String {
    match m.validate() {
        Ok(()) => panic!("manifest was accepted: {m:#?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn sample_is_valid_and_round_trips() {
    let k = key();
    let m = sample(&k);
    let bytes = m.encode().expect("valid");
    let back = Manifest::decode(&bytes).expect("decodes");
    assert_eq!(back, m);
    assert_eq!(
        back.content_id().expect("valid"),
        m.content_id().expect("valid")
    );
}

#[test]
fn dot_dot_path() {
    let mut m = sample(&key());
    m.files.push(file("d/../../etc/passwd", 0));
    let e = refused(&m);
    assert!(e.contains("files[4]") && e.contains("'..'"), "{e}");
}

#[test]
fn absolute_path() {
    let mut m = sample(&key());
    m.files.insert(0, file("/etc/passwd", 0));
    m.chunks.iter_mut().for_each(|c| c.file += 1);
    let e = refused(&m);
    assert!(e.contains("files[0]") && e.contains("absolute"), "{e}");
}

#[test]
fn duplicate_path() {
    let mut m = sample(&key());
    m.files.insert(2, file("d/a.bin", 0));
    m.chunks.iter_mut().for_each(|c| c.file = 1);
    let e = refused(&m);
    assert!(
        e.contains("files[2]") && e.contains("duplicate of files[1]"),
        "{e}"
    );
}

#[test]
fn unsorted_paths() {
    let mut m = sample(&key());
    m.files.swap(2, 3);
    let e = refused(&m);
    assert!(e.contains("out of order"), "{e}");
}

#[test]
fn file_under_a_file() {
    let mut m = sample(&key());
    m.files.insert(2, file("d/a.bin/x", 0));
    let e = refused(&m);
    assert!(e.contains("parent \"d/a.bin\" is not a directory"), "{e}");
}

#[test]
fn symlink_escaping_the_root() {
    for target in ["../../etc/passwd", "/etc/passwd", "../.."] {
        let mut m = sample(&key());
        m.files[3] = link("d/l", target);
        let e = refused(&m);
        assert!(e.contains("files[3]") && e.contains("d/l"), "{target}: {e}");
    }
}

#[test]
fn symlink_through_symlink_is_refused() {
    // "d/l" -> "." resolves lexically inside, but "d/x" -> "l/../.." would
    // walk through the link: refused rather than trusted.
    let mut m = sample(&key());
    m.files[3] = link("d/l", ".");
    m.files.push(link("d/x", "l/../.."));
    let e = refused(&m);
    assert!(e.contains("passes through another symlink"), "{e}");
}

#[test]
fn symlink_inside_is_fine() {
    let mut m = sample(&key());
    m.files[3] = link("d/l", "../d/./a.bin");
    m.validate().expect("stays inside");
}

#[test]
fn overlapping_chunks() {
    let mut m = sample(&key());
    m.chunks = vec![chunk(1, 0, 6), chunk(1, 5, 5)];
    let e = refused(&m);
    assert!(
        e.contains("chunks[1]") && e.contains("overlaps") && e.contains("d/a.bin"),
        "{e}"
    );
}

#[test]
fn gap_between_chunks() {
    let mut m = sample(&key());
    m.chunks = vec![chunk(1, 0, 5), chunk(1, 6, 4)];
    let e = refused(&m);
    assert!(e.contains("chunks[1]") && e.contains("gap"), "{e}");
}

#[test]
fn chunks_short_of_the_file() {
    let mut m = sample(&key());
    m.chunks.pop();
    let e = refused(&m);
    assert!(e.contains("cover 6 of its 10 bytes"), "{e}");
}

#[test]
fn chunk_past_the_end() {
    let mut m = sample(&key());
    m.chunks[1].length = 5;
    let e = refused(&m);
    assert!(e.contains("beyond the file's size 10"), "{e}");
}

#[test]
fn chunk_for_a_directory() {
    let mut m = sample(&key());
    m.chunks.insert(0, chunk(0, 0, 1));
    let e = refused(&m);
    assert!(e.contains("chunks[0]") && e.contains("dir"), "{e}");
}

#[test]
fn chunk_for_missing_file() {
    let mut m = sample(&key());
    m.chunks.push(chunk(9, 0, 1));
    let e = refused(&m);
    assert!(e.contains("chunks[2]") && e.contains("file index 9"), "{e}");
}

#[test]
fn sizes_that_do_not_add_up() {
    let mut m = sample(&key());
    m.total_size = 11;
    let e = refused(&m);
    assert!(e.contains("total size 11") && e.contains("10 bytes"), "{e}");
}

#[test]
fn setuid_mode() {
    let mut m = sample(&key());
    m.files[1].mode = 0o4755;
    let e = refused(&m);
    assert!(e.contains("files[1]") && e.contains("setuid"), "{e}");
}

#[test]
fn bad_names_and_versions() {
    for name in ["", "a/b/c", "-x", "x y", "ünï"] {
        let mut m = sample(&key());
        m.name = name.into();
        assert!(
            matches!(m.validate(), Err(ManifestError::BadName { .. })),
            "{name}"
        );
    }
    let mut m = sample(&key());
    m.version = "1@2".into();
    assert!(matches!(
        m.validate(),
        Err(ManifestError::BadVersion { .. })
    ));
}

#[test]
fn truncated_and_garbage_bytes() {
    let bytes = sample(&key()).encode().expect("valid");
    for cut in [1, bytes.len() / 2, bytes.len() - 1] {
        let e = Manifest::decode(&bytes[..cut]).expect_err("truncated");
        assert!(
            matches!(
                e,
                ManifestError::Decode(_) | ManifestError::NotCanonical { .. }
            ),
            "{e}"
        );
    }
    let e = Manifest::decode(b"\xff\xff\xff\xff garbage").expect_err("garbage");
    assert!(e.to_string().contains("not valid protobuf"), "{e}");
    assert!(SignedManifest::decode(b"\x0a\xff\xff\xff\xff").is_err());
}

#[test]
fn non_canonical_encoding_is_refused() {
    let mut bytes = sample(&key()).encode().expect("valid").to_vec();
    // An unknown field (tag 99, varint 1) decodes but does not re-encode.
    bytes.extend_from_slice(&[0x98, 0x06, 0x01]);
    let e = Manifest::decode(&bytes).expect_err("non-canonical");
    assert!(matches!(e, ManifestError::NotCanonical { .. }), "{e}");
}

#[test]
fn signature_checks() {
    let k = key();
    let other = key();
    let m = sample(&k);
    let signed = SignedManifest::sign(&m, &k).expect("signs");
    let trusted: TrustedKeys = [k.public()].into_iter().collect();
    let ok = signed.verify(&trusted).expect("verifies");
    assert_eq!(ok.content_id, m.content_id().expect("valid"));
    let decoded = SignedManifest::decode(&signed.encode()).expect("envelope");
    assert_eq!(decoded, signed);

    // Untrusted key.
    let e = signed
        .verify(&[other.public()].into_iter().collect())
        .expect_err("untrusted");
    assert!(matches!(e, VerifyError::UntrustedKey { .. }), "{e}");

    // Wrong signature: signed by another key that claims to be `k`.
    let mut pb = signed.to_pb();
    let forged = SignedManifest::sign(
        &Manifest {
            publisher_key_id: other.public().key_id().to_string(),
            ..m.clone()
        },
        &other,
    )
    .expect("signs");
    pb.signature.as_mut().expect("signed").signature =
        forged.to_pb().signature.expect("signed").signature;
    let e = SignedManifest::from(pb)
        .verify(&trusted)
        .expect_err("forged");
    assert!(matches!(e, VerifyError::BadSignature { .. }), "{e}");

    // Missing signature.
    let mut pb = signed.to_pb();
    pb.signature = None;
    let e = SignedManifest::from(pb)
        .verify(&trusted)
        .expect_err("unsigned");
    assert!(matches!(e, VerifyError::MissingSignature), "{e}");

    // Manifest altered after signing.
    let mut pb = signed.to_pb();
    let altered = Manifest {
        version: "2".into(),
        ..m.clone()
    };
    pb.manifest = altered.encode().expect("valid");
    let e = SignedManifest::from(pb)
        .verify(&trusted)
        .expect_err("altered");
    assert!(matches!(e, VerifyError::BadSignature { .. }), "{e}");

    // Signing a manifest that names another publisher.
    let e = SignedManifest::sign(&m, &other).expect_err("mismatch");
    assert!(matches!(e, VerifyError::KeyMismatch { .. }), "{e}");
}

#[test]
fn keys_round_trip_through_their_file_forms() {
    let k = key();
    let pem = k.to_pem().expect("pem");
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    let back = PublisherKey::from_pem(&pem).expect("parses");
    assert_eq!(back.public(), k.public());
    let text = k.public().to_string();
    assert_eq!(
        text.parse::<shoal_proto::PublicKey>().expect("parses"),
        k.public()
    );
    assert!("ed25519:zz".parse::<shoal_proto::PublicKey>().is_err());
    assert!(PublisherKey::from_pem("not a key").is_err());
}

/// `sample` plus three small files after it: files[4] d/m (3 bytes),
/// files[5] d/n (empty), files[6] d/o (5 bytes).
fn with_small_files(k: &PublisherKey) -> Manifest {
    let mut m = sample(k);
    m.files
        .extend([file("d/m", 3), file("d/n", 0), file("d/o", 5)]);
    m.total_size += 8;
    m
}

#[test]
fn packed_chunk_of_whole_files_is_valid() {
    let mut m = with_small_files(&key());
    // a.bin's chunks stay its own; m and o share one, stepping over the
    // empty file between them.
    m.chunks.push(chunk(4, 0, 8));
    m.validate().expect("whole files packed");
    let spans: Vec<_> = m
        .spans(2)
        .map(|s| (s.file, s.offset, s.len, s.at))
        .collect();
    assert_eq!(spans, vec![(4, 0, 3, 0), (6, 0, 5, 3)]);
    let spans: Vec<_> = m
        .spans(1)
        .map(|s| (s.file, s.offset, s.len, s.at))
        .collect();
    assert_eq!(spans, vec![(1, 6, 4, 0)]);
    assert_eq!(m.spans(3).count(), 0, "no such chunk");
    let back = Manifest::decode(&m.encode().expect("valid")).expect("decodes");
    assert_eq!(back, m);
}

#[test]
fn packed_chunk_across_a_split_file_is_refused() {
    let mut m = with_small_files(&key());
    // From the middle of a.bin on into m: only whole files may be packed.
    m.chunks = vec![chunk(1, 0, 6), chunk(1, 6, 7), chunk(6, 0, 5)];
    let e = refused(&m);
    assert!(
        e.contains("chunks[1]") && e.contains("beyond the file's size 10"),
        "{e}"
    );
}

#[test]
fn packed_chunk_ending_inside_a_file_is_refused() {
    let mut m = with_small_files(&key());
    m.chunks.push(chunk(4, 0, 6));
    let e = refused(&m);
    assert!(
        e.contains("chunks[2]") && e.contains("ends 3 bytes into \"d/o\""),
        "{e}"
    );
}

#[test]
fn packed_chunk_past_the_last_file_is_refused() {
    let mut m = with_small_files(&key());
    m.chunks.push(chunk(4, 0, 9));
    let e = refused(&m);
    assert!(e.contains("chunks[2]") && e.contains("beyond"), "{e}");
}

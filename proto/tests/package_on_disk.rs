//! Building manifests from real trees and checking content against them.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use shoal_proto::chunking::ChunkingSpec;
use shoal_proto::package::{
    ContentProblem, CreateError, CreateOptions, create_manifest, verify_content,
};
use shoal_proto::{PublisherKey, SignedManifest, TrustedKeys};

fn write_random(path: &Path, len: usize, seed: &[u8]) {
    let mut data = vec![0u8; len];
    blake3::Hasher::new()
        .update(seed)
        .finalize_xof()
        .fill(&mut data);
    fs::write(path, data).expect("write");
}

fn tree(root: &Path) {
    fs::create_dir_all(root.join("docs/week1")).expect("mkdir");
    write_random(&root.join("big.bin"), 3 << 20, b"big");
    write_random(&root.join("docs/week1/slides.pdf"), 200_000, b"slides");
    fs::write(root.join("docs/readme.txt"), b"hello\n").expect("write");
    fs::write(root.join("docs/empty"), b"").expect("write");
    #[cfg(unix)]
    std::os::unix::fs::symlink("week1/slides.pdf", root.join("docs/latest.pdf")).expect("symlink");
}

fn opts(key: &PublisherKey, chunking: ChunkingSpec) -> CreateOptions {
    CreateOptions {
        name: "labs/cs101-week3".into(),
        version: "1".into(),
        chunking,
        publisher: key.public(),
        threads: 2,
        created_unix_ms: None,
        labels: BTreeMap::new(),
    }
}

#[test]
fn create_then_verify_a_tree_with_both_chunkings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("pkg");
    tree(&root);
    let key = PublisherKey::generate().expect("key");
    for spec in [
        ChunkingSpec::fixed(1 << 20).expect("valid"),
        ChunkingSpec::cdc(64 << 10).expect("valid"),
    ] {
        let m = create_manifest(&root, &opts(&key, spec), &()).expect("creates");
        assert_eq!(m.total_size, (3 << 20) + 200_000 + 6);
        let again = create_manifest(&root, &opts(&key, spec), &()).expect("creates");
        assert_eq!(
            m.content_id().expect("valid"),
            again.content_id().expect("valid"),
            "reproducible"
        );

        let signed = SignedManifest::sign(&m, &key).expect("signs");
        let trusted: TrustedKeys = [key.public()].into_iter().collect();
        let verified = SignedManifest::decode(&signed.encode())
            .expect("decodes")
            .verify(&trusted)
            .expect("verifies");
        let report = verify_content(&verified.manifest, &root, 2, &()).expect("checks");
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!(report.bytes_hashed, m.total_size);
    }
}

#[test]
fn verify_finds_a_flipped_byte_and_names_the_chunk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("pkg");
    tree(&root);
    let key = PublisherKey::generate().expect("key");
    let m = create_manifest(
        &root,
        &opts(&key, ChunkingSpec::fixed(1 << 20).expect("valid")),
        &(),
    )
    .expect("creates");
    let big = root.join("big.bin");
    let mut data = fs::read(&big).expect("read");
    data[(2 << 20) + 12345] ^= 1;
    fs::write(&big, data).expect("write");
    let report = verify_content(&m, &root, 2, &()).expect("checks");
    assert_eq!(
        report.problems,
        vec![ContentProblem::ChunkMismatch {
            path: "big.bin".into(),
            chunk: 2,
            offset: 2 << 20,
            length: 1 << 20,
        }]
    );
}

#[test]
fn verify_reports_missing_extra_resized_and_retargeted_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("pkg");
    tree(&root);
    let key = PublisherKey::generate().expect("key");
    let m = create_manifest(
        &root,
        &opts(&key, ChunkingSpec::fixed(1 << 20).expect("valid")),
        &(),
    )
    .expect("creates");
    fs::remove_file(root.join("docs/readme.txt")).expect("rm");
    fs::write(root.join("docs/extra"), b"x").expect("write");
    fs::write(root.join("docs/empty"), b"now not empty").expect("write");
    #[cfg(unix)]
    {
        fs::remove_file(root.join("docs/latest.pdf")).expect("rm");
        std::os::unix::fs::symlink("elsewhere", root.join("docs/latest.pdf")).expect("symlink");
    }
    let report = verify_content(&m, &root, 2, &()).expect("checks");
    let text: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
    assert!(
        text.iter().any(|t| t == "docs/readme.txt: missing"),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|t| t == "docs/extra: not part of the package"),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|t| t.starts_with("docs/empty: is 13 bytes")),
        "{text:?}"
    );
    #[cfg(unix)]
    assert!(
        text.iter()
            .any(|t| t.starts_with("docs/latest.pdf: symlink points to")),
        "{text:?}"
    );
}

#[test]
fn single_file_package_verifies_against_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("image.iso");
    write_random(&f, 5 << 20, b"iso");
    let key = PublisherKey::generate().expect("key");
    let m = create_manifest(
        &f,
        &opts(&key, ChunkingSpec::fixed(4 << 20).expect("valid")),
        &(),
    )
    .expect("creates");
    assert_eq!(m.files.len(), 1);
    assert_eq!(m.files[0].path, "image.iso");
    assert_eq!(m.chunks.len(), 2);
    assert!(verify_content(&m, &f, 1, &()).expect("checks").is_ok());
}

#[cfg(unix)]
#[test]
fn escaping_symlink_in_the_tree_is_refused_at_create() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("pkg");
    fs::create_dir(&root).expect("mkdir");
    std::os::unix::fs::symlink("../../etc/passwd", root.join("evil")).expect("symlink");
    let key = PublisherKey::generate().expect("key");
    let e = create_manifest(
        &root,
        &opts(&key, ChunkingSpec::fixed(1 << 20).expect("valid")),
        &(),
    )
    .expect_err("refused");
    assert!(matches!(e, CreateError::Manifest(_)), "{e}");
    assert!(e.to_string().contains("escapes the package root"), "{e}");
}

#[test]
fn bad_name_is_refused_before_hashing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = PublisherKey::generate().expect("key");
    let mut o = opts(&key, ChunkingSpec::fixed(1 << 20).expect("valid"));
    o.name = "has space".into();
    let e = create_manifest(dir.path(), &o, &()).expect_err("refused");
    assert!(e.to_string().contains("package name \"has space\""), "{e}");
}

#[test]
fn fixed_chunking_packs_small_files_and_verify_names_the_pack() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("pkg");
    fs::create_dir_all(root.join("notes")).expect("mkdir");
    // 40 files of 10 KiB to 49 KiB, then one of 600 KiB, between them a
    // file exactly one chunk long.
    let mut small = 0u64;
    for i in 0..40u64 {
        let len = (10 + i) << 10;
        small += len;
        write_random(
            &root.join(format!("notes/{i:02}.txt")),
            len as usize,
            &i.to_le_bytes(),
        );
    }
    write_random(&root.join("notes/20-exact.bin"), 256 << 10, b"exact");
    write_random(&root.join("video.bin"), 600 << 10, b"video");
    let key = PublisherKey::generate().expect("key");
    let fixed = ChunkingSpec::fixed(256 << 10).expect("valid");
    let m = create_manifest(&root, &opts(&key, fixed), &()).expect("creates");
    m.validate().expect("valid");
    assert!(m.chunks.iter().all(|c| c.length <= 256 << 10));
    let packed = (0..m.chunks.len())
        .filter(|&c| m.spans(c).count() > 1)
        .count();
    // 1.2 MiB of small files in 256 KiB chunks: at least 5 packs, and far
    // fewer chunks than files.
    assert!(packed >= 5, "{packed} packed chunks");
    assert!(
        m.chunks.len() < 20,
        "{} chunks for 42 files",
        m.chunks.len()
    );
    let covered: u64 = (0..m.chunks.len())
        .flat_map(|c| m.spans(c).collect::<Vec<_>>())
        .map(|s| u64::from(s.len))
        .sum();
    assert_eq!(covered, small + (256 << 10) + (600 << 10));
    assert!(
        verify_content(&m, &root, 2, &())
            .expect("checks")
            .problems
            .is_empty()
    );

    // Content-defined chunking keeps every file apart.
    let cdc = ChunkingSpec::cdc(64 << 10).expect("valid");
    let mc = create_manifest(&root, &opts(&key, cdc), &()).expect("creates");
    assert!((0..mc.chunks.len()).all(|c| mc.spans(c).count() == 1));

    // A flipped byte in a packed file: the pack is named by its first file.
    let victim = root.join("notes/05.txt");
    let mut data = fs::read(&victim).expect("read");
    data[100] ^= 1;
    fs::write(&victim, data).expect("write");
    let report = verify_content(&m, &root, 2, &()).expect("checks");
    let [ContentProblem::ChunkMismatch { path, chunk, .. }] = report.problems.as_slice() else {
        panic!("one mismatch expected: {:?}", report.problems);
    };
    assert!(
        m.spans(*chunk)
            .any(|s| m.files[s.file as usize].path == "notes/05.txt")
    );
    assert!(path.contains("more files packed with it"), "{path}");
}

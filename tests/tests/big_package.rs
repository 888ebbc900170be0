//! Acceptance: a 2 GiB file gives the same content id on every run with
//! both chunkings, and `verify` catches a single flipped byte.

use std::fs;

use shoal_tests::{flip_byte, shoal, write_random};

const SIZE: u64 = 2 << 30;

#[test]
fn two_gib_file_is_reproducible_and_one_flipped_byte_is_caught() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    assert_eq!(shoal(d, &["key", "generate", "--out", "k"]).code, 0);
    write_random(&d.join("image.iso"), SIZE, b"two gib");

    for chunking in ["fixed", "cdc"] {
        let mut ids = Vec::new();
        for run_no in 0..2 {
            let out = format!("{chunking}-{run_no}.manifest");
            let run = shoal(
                d,
                &[
                    "pkg",
                    "create",
                    "image.iso",
                    "--name",
                    "it/image",
                    "--version",
                    "1",
                    "--key",
                    "k.key",
                    "--chunking",
                    chunking,
                    "-o",
                    &out,
                    "--json",
                    "-q",
                ],
            );
            assert_eq!(run.code, 0, "{}", run.stderr);
            ids.push(run.json()["content_id"].as_str().expect("id").to_owned());
        }
        assert_eq!(
            ids[0], ids[1],
            "{chunking}: content id differs between runs"
        );
        let a = fs::read(d.join(format!("{chunking}-0.manifest"))).expect("read");
        let b = fs::read(d.join(format!("{chunking}-1.manifest"))).expect("read");
        let ma = shoal_proto::SignedManifest::decode(&a)
            .expect("decode")
            .manifest_unverified()
            .expect("valid");
        let mb = shoal_proto::SignedManifest::decode(&b)
            .expect("decode")
            .manifest_unverified()
            .expect("valid");
        assert_eq!(
            ma.chunks, mb.chunks,
            "{chunking}: chunk tables differ between runs"
        );
    }

    for chunking in ["fixed", "cdc"] {
        let m = format!("{chunking}-0.manifest");
        let run = shoal(
            d,
            &[
                "pkg",
                "verify",
                &m,
                "image.iso",
                "--trusted-key",
                "k.pub",
                "-q",
            ],
        );
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    }
    flip_byte(&d.join("image.iso"), SIZE / 3);
    for chunking in ["fixed", "cdc"] {
        let m = format!("{chunking}-0.manifest");
        let run = shoal(
            d,
            &[
                "pkg",
                "verify",
                &m,
                "image.iso",
                "--trusted-key",
                "k.pub",
                "--json",
            ],
        );
        assert_eq!(
            run.code, 1,
            "{chunking}: flipped byte not detected: {}",
            run.stdout
        );
        let problems = run.json()["content"]["problems"]
            .as_array()
            .cloned()
            .expect("problems");
        assert_eq!(problems.len(), 1, "{chunking}: {problems:?}");
        let off = problems[0]["offset"].as_u64().expect("offset");
        let len = problems[0]["length"].as_u64().expect("length");
        assert!(
            off <= SIZE / 3 && SIZE / 3 < off + len,
            "{chunking}: wrong chunk named: {problems:?}"
        );
    }
}

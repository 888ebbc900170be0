//! `shoal key` / `shoal pkg` end to end through the real binary: output,
//! JSON, and the exit codes scripts rely on.

use std::fs;

use shoal_tests::{flip_byte, shoal, write_random};

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = shoal(dir.path(), &["key", "generate", "--out", "keys/pub"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let content = dir.path().join("content/sub");
    fs::create_dir_all(&content).expect("mkdir");
    write_random(&dir.path().join("content/data.bin"), 9 << 20, b"data");
    fs::write(content.join("notes.txt"), "notes\n").expect("write");
    dir
}

#[test]
fn create_verify_inspect_with_json() {
    let dir = setup();
    let d = dir.path();
    let run = shoal(
        d,
        &[
            "pkg",
            "create",
            "content",
            "--name",
            "labs/notes",
            "--version",
            "1",
            "--key",
            "keys/pub.key",
            "--label",
            "course=cs101",
            "--json",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let created = run.json();
    assert_eq!(created["manifest_path"], "labs_notes@1.manifest");
    assert_eq!(created["chunks"], 4);
    assert_eq!(created["total_size"], (9 << 20) + 6);
    let id = created["content_id"].as_str().expect("id").to_owned();

    let run = shoal(
        d,
        &[
            "pkg",
            "verify",
            "labs_notes@1.manifest",
            "content",
            "--trusted-key",
            "keys/pub.pub",
            "--json",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let v = run.json();
    assert_eq!(v["ok"], true);
    assert_eq!(v["content_id"], id.as_str());
    assert_eq!(v["content"]["chunks_checked"], 4);

    let run = shoal(
        d,
        &[
            "pkg",
            "inspect",
            "labs_notes@1.manifest",
            "--files",
            "--chunks",
            "--json",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let i = run.json();
    assert_eq!(i["content_id"], id.as_str());
    assert_eq!(i["labels"]["course"], "cs101");
    assert_eq!(i["files"].as_array().map(Vec::len), Some(3));
    assert_eq!(i["chunks"].as_array().map(Vec::len), Some(4));
    assert_eq!(i["signature_checked"], false);

    // Human output names the package and says OK.
    let run = shoal(
        d,
        &[
            "pkg",
            "verify",
            "labs_notes@1.manifest",
            "content",
            "--trusted-key",
            "keys/pub.pub",
        ],
    );
    assert!(
        run.stdout.contains("labs/notes@1") && run.stdout.contains("OK"),
        "{}",
        run.stdout
    );
}

#[test]
fn exit_codes_for_each_failure() {
    let dir = setup();
    let d = dir.path();
    let create = [
        "pkg",
        "create",
        "content",
        "--name",
        "n",
        "--version",
        "1",
        "--key",
        "keys/pub.key",
    ];
    assert_eq!(shoal(d, &create).code, 0);
    // Output exists: 73 without --force.
    let run = shoal(d, &create);
    assert_eq!(run.code, 73, "{}", run.stderr);
    assert!(run.stderr.contains("--force"), "{}", run.stderr);

    // Untrusted publisher: 1.
    assert_eq!(shoal(d, &["key", "generate", "--out", "other"]).code, 0);
    let run = shoal(
        d,
        &[
            "pkg",
            "verify",
            "n@1.manifest",
            "--trusted-key",
            "other.pub",
        ],
    );
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stdout.contains("not a trusted publisher"),
        "{}",
        run.stdout
    );

    // Trusted by literal key text works.
    let public = fs::read_to_string(d.join("keys/pub.pub")).expect("read");
    assert_eq!(
        shoal(
            d,
            &[
                "pkg",
                "verify",
                "n@1.manifest",
                "--trusted-key",
                public.trim()
            ]
        )
        .code,
        0
    );

    // One flipped byte: 1, and the chunk is named.
    flip_byte(&d.join("content/data.bin"), 5 << 20);
    let run = shoal(
        d,
        &[
            "pkg",
            "verify",
            "n@1.manifest",
            "content",
            "--trusted-key",
            "keys/pub.pub",
            "--json",
        ],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    let problems = &run.json()["content"]["problems"];
    assert_eq!(problems[0]["problem"], "chunk_mismatch");
    assert_eq!(problems[0]["path"], "data.bin");
    assert_eq!(problems[0]["chunk"], 1);

    // Garbage manifest: 65 with a clear message.
    fs::write(d.join("bad.manifest"), "this is not a manifest").expect("write");
    let run = shoal(d, &["pkg", "inspect", "bad.manifest"]);
    assert_eq!(run.code, 65, "{}", run.stderr);
    assert!(
        run.stderr.contains("bad.manifest") && run.stderr.contains("not valid protobuf"),
        "{}",
        run.stderr
    );

    // Truncated manifest: 65.
    let bytes = fs::read(d.join("n@1.manifest")).expect("read");
    fs::write(d.join("cut.manifest"), &bytes[..bytes.len() / 2]).expect("write");
    assert_eq!(
        shoal(
            d,
            &[
                "pkg",
                "verify",
                "cut.manifest",
                "--trusted-key",
                "keys/pub.pub"
            ]
        )
        .code,
        65
    );

    // Missing input: 66.
    assert_eq!(shoal(d, &["pkg", "inspect", "nope.manifest"]).code, 66);
    assert_eq!(
        shoal(
            d,
            &[
                "pkg",
                "create",
                "nope",
                "--name",
                "x",
                "--version",
                "1",
                "--key",
                "keys/pub.key"
            ]
        )
        .code,
        66
    );

    // Usage errors: 2.
    assert_eq!(shoal(d, &["pkg", "verify", "n@1.manifest"]).code, 2);
    let run = shoal(
        d,
        &[
            "pkg",
            "create",
            "content",
            "--name",
            "x",
            "--version",
            "1",
            "--key",
            "keys/pub.key",
            "--chunking",
            "cdc",
            "--chunk-size",
            "1MiB",
        ],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);

    // Bad name: 65, named.
    let run = shoal(
        d,
        &[
            "pkg",
            "create",
            "content",
            "--name",
            "a b",
            "--version",
            "1",
            "--key",
            "keys/pub.key",
            "-o",
            "x.manifest",
        ],
    );
    assert_eq!(run.code, 65, "{}", run.stderr);
    assert!(
        run.stderr.contains("package name \"a b\""),
        "{}",
        run.stderr
    );

    // Errors are JSON too with --json.
    let run = shoal(d, &["pkg", "inspect", "nope.manifest", "--json"]);
    assert_eq!(run.json()["exit_code"], 66);
}

#[test]
fn secret_key_is_private_and_public_key_is_one_line() {
    let dir = setup();
    let public = fs::read_to_string(dir.path().join("keys/pub.pub")).expect("read");
    assert!(public.starts_with("ed25519:") && public.lines().count() == 1);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join("keys/pub.key"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let run = shoal(dir.path(), &["key", "show", "keys/pub.key", "--json"]);
    assert_eq!(run.json()["public_key"], public.trim());
}

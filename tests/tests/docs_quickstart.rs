//! docs/quickstart.md runs as written: every fenced `sh` block, in order,
//! in one `bash` with `set -euo pipefail`, with HOME in a temp directory
//! and the binaries under test first on PATH. The page's `cargo install`
//! lines are the one thing replaced (by a shell function that says so):
//! CI has built the binaries already, and installing would build them
//! again.
//!
//! The script runs in its own process group, bounded in time; on failure
//! or timeout the whole group (the daemons the page starts with `&`) is
//! killed, and the output is shown.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(300);
/// The loopback ports the page uses.
const PORTS: [u16; 5] = [7800, 7801, 7410, 7411, 7412];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// The fenced ```sh blocks of a Markdown text, in order.
fn sh_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match current.as_mut() {
            None if line.trim_end() == "```sh" => current = Some(String::new()),
            None => {}
            Some(_) if line.trim_end() == "```" => blocks.extend(current.take()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    assert!(current.is_none(), "an unterminated ```sh block");
    blocks
}

/// Kills the process group (the script and everything it started).
struct Group(u32);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0)])
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn quickstart_runs_as_written() {
    let busy: Vec<u16> = PORTS
        .iter()
        .copied()
        .filter(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_err())
        .collect();
    assert!(
        busy.is_empty(),
        "the quickstart's loopback ports {busy:?} are taken: stop what uses them"
    );
    let page = std::fs::read_to_string(repo().join("docs/quickstart.md")).expect("quickstart");
    let blocks = sh_blocks(&page);
    assert!(blocks.len() >= 6, "only {} sh blocks", blocks.len());
    assert!(
        blocks[0].contains("cargo install"),
        "the first block installs"
    );

    let home = tempfile::tempdir().expect("tempdir");
    let bin_dir = shoal_tests::bin("shoal")
        .parent()
        .expect("binary directory")
        .to_owned();
    for b in ["shoal-agent", "shoal-controller"] {
        assert!(shoal_tests::bin(b).exists());
    }
    let mut script = String::from(
        "set -euo pipefail\n\
         cargo() { echo \"docs test: not running 'cargo $*': the built binaries are on PATH\" >&2; }\n",
    );
    for (i, block) in blocks.iter().enumerate() {
        script.push_str(&format!("echo '### block {}' >&2\n", i + 1));
        script.push_str(block);
    }
    script.push_str("echo '### quickstart done' >&2\n");
    let script_path = home.path().join("quickstart.sh");
    std::fs::write(&script_path, &script).expect("write script");

    let out_path = home.path().join("output.log");
    let out = std::fs::File::create(&out_path).expect("log");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = Command::new("bash")
        .arg(&script_path)
        .current_dir(repo())
        .env("HOME", home.path())
        .env("PATH", path)
        .env_remove("SHOAL_CONTROLLER_CONFIG")
        .env_remove("SHOAL_AGENT_CONFIG")
        .env_remove("SHOAL_SOCKET")
        .env_remove("SHOAL_ENROLL_TOKEN")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .process_group(0)
        .spawn()
        .expect("run bash");
    let group = Group(child.id());
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    drop(group);
    let _ = child.wait();
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    let work = home.path().join("shoal-quickstart");
    let logs: String = ["controller.log", "seed/agent.log", "lab-b-01/agent.log"]
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(work.join(f)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            format!(
                "--- {f} (last lines)\n{}\n",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })
        .collect();
    match status {
        None => panic!("the quickstart did not finish in {LIMIT:?}:\n{output}\n{logs}"),
        Some(s) => assert!(
            s.success() && output.contains("### quickstart done"),
            "the quickstart failed ({s}):\n{output}\n{logs}"
        ),
    }
    // What the page promises: both lab agents hold a verified copy.
    assert!(output.contains("2 done, 0 active, 0 failed"), "{output}");
    assert!(
        work.join("lab-b-02/data/packages/course_week3@1/lecture.mp4")
            .exists()
    );
}

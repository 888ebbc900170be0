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

# The observability test runs a real Prometheus against the agents and the
# controller (Debian's prometheus: the server and promtool). Install it
# where it is missing and we may; without it that test skips with a
# message. The package's scripts would start a prometheus service on :9090;
# a policy-rc.d denying service starts keeps it off for the install (the
# test uses its own loopback port either way), and goes again after.
if [ ! -x /usr/bin/prometheus ] || [ ! -x /usr/bin/promtool ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing prometheus"
    own_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
      chmod 755 /usr/sbin/policy-rc.d
      own_policy=1
    fi
    status=0
    { apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; } ||
      status=$?
    if [ -n "$own_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
    [ "$status" = 0 ] || exit "$status"
  fi
fi

# The deployment tests (tests/tests/deploy_*.rs): Helm's library
# (helm-python-sdk) lints and renders the chart, ansible-core and
# ansible-lint check and run the playbooks. They go into a virtualenv of
# their own, so no other Python's packages change; the tests find it
# through SHOAL_TOOLS_VENV. systemd-analyze (Debian's systemd) verifies
# the units. Installed where missing and we may (root); without them
# those tests skip with a message.
export SHOAL_TOOLS_VENV="${SHOAL_TOOLS_VENV:-/opt/shoal-test-tools/venv}"
py_tools=(helm-python-sdk==0.2.2 ansible-core==2.19.14 ansible-lint==26.10.1 pyyaml)
py_tools_ok() {
  "$SHOAL_TOOLS_VENV/bin/python" -c 'import helm_python, yaml' >/dev/null 2>&1 &&
    [ -x "$SHOAL_TOOLS_VENV/bin/ansible-playbook" ] &&
    [ -x "$SHOAL_TOOLS_VENV/bin/ansible-lint" ]
}
if ! py_tools_ok && [ "$(id -u)" = 0 ] && command -v python3 >/dev/null 2>&1; then
  log "installing ${py_tools[*]} into $SHOAL_TOOLS_VENV"
  if [ ! -x "$SHOAL_TOOLS_VENV/bin/pip" ]; then
    rm -rf "$SHOAL_TOOLS_VENV"
    if ! python3 -m venv "$SHOAL_TOOLS_VENV" >/dev/null 2>&1; then
      # Debian's own python3 keeps venv (ensurepip) in a package.
      rm -rf "$SHOAL_TOOLS_VENV"
      apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
      python3 -m venv "$SHOAL_TOOLS_VENV"
    fi
  fi
  "$SHOAL_TOOLS_VENV/bin/pip" install -q --disable-pip-version-check "${py_tools[@]}"
fi
if ! command -v systemd-analyze >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing systemd (systemd-analyze)"
    apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd
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

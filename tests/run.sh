#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need,
# builds once, then runs every test. Usage: bash tests/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> toolchain targets for Wasm guests"
rustup target add wasm32-wasip1 wasm32-wasip2

# Debian packages the tests use: a real OCI registry for image pulls,
# curl (what a user runs against `kubectl port-forward`), runc and
# busybox-static (Linux containers and their test images), nftables and
# iproute2 (the rules and route of pod sandboxes, and the partitions of
# the HA fault runs), fiu-utils (fsync failures in the fault runs).
PACKAGES=(docker-registry curl runc busybox-static nftables iproute2 fiu-utils)
if [ ${#PACKAGES[@]} -gt 0 ]; then
  echo "==> apt packages: ${PACKAGES[*]}"
  missing=()
  for p in "${PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
fi

echo "==> Python client for the client tests (pip kubernetes)"
python3 -c "import kubernetes" 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check kubernetes

echo "==> Wasm example guests (from source)"
# hello-http, fetcher and incluster are HTTP functions: components only
cargo build --release --manifest-path examples/Cargo.toml --target wasm32-wasip1 \
  --workspace --exclude hello-http --exclude fetcher --exclude incluster
cargo build --release --manifest-path examples/Cargo.toml --target wasm32-wasip2

echo "==> format"
cargo fmt --all -- --check

echo "==> build, linted"
# What `cargo clippy --workspace --all-targets -- -D warnings` checks, in the
# build itself: clippy-driver compiles the workspace's own crates and lints
# them in the same pass (CLIPPY_ARGS is how cargo-clippy hands it its
# arguments). A separate `cargo clippy` would type-check every dependency a
# second time, which took about half of the CI run. The tests below run with
# the same settings, so nothing is rebuilt.
RUSTC_WORKSPACE_WRAPPER="$(rustup which clippy-driver)"
export RUSTC_WORKSPACE_WRAPPER
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
cargo build --workspace --all-targets

echo "==> tests"
cargo nextest run --workspace --no-fail-fast
cargo test --workspace --doc

echo "==> wkctl without the node (no server, agent or wasmtime)"
cargo build --no-default-features --bin wkctl

#!/usr/bin/env bash
# Runs every Myelin test: unit tests and the kernel tests (root, network
# namespaces, real eBPF). Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
cargo build --workspace --bins
export MYELIN_BIN_DIR="$PWD/target/debug"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast --test-threads 2 "$@"
else
  cargo test --workspace --no-fail-fast "$@" -- --test-threads 2
fi

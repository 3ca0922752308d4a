#!/usr/bin/env bash
# Builds the release binaries and runs `myelin perf`: Myelin's eBPF datapath
# side by side with kernel routing, iptables (1, 1,000, 10,000 rules) and a
# bare veth, interleaved, in hermetic network namespaces. Run as root.
#
#   scripts/bench.sh                 # the full matrix (about 8 minutes on 2 vCPUs)
#   scripts/bench.sh --quick         # smoke run, well under 2 minutes
#   scripts/bench.sh -o json > r.json
#   scripts/bench.sh --rules 1,1000 --duration 5 --rounds 7
#
# Anything after the script name goes to `myelin perf` (see `myelin perf --help`).
# Results are for BENCHMARKS.md; quieten the machine first (no builds running).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "bench: builds network namespaces and loads eBPF programs: run as root" >&2
  exit 1
fi
for tool in iperf3:iperf3 iptables-restore:iptables nsenter:util-linux ip:iproute2; do
  if ! command -v "${tool%%:*}" >/dev/null; then
    echo "bench: ${tool%%:*} is missing: apt-get install ${tool##*:} (or run scripts/setup.sh)" >&2
    exit 1
  fi
done
cargo build --release --workspace --bins >&2
export MYELIN_BIN_DIR="$PWD/target/release"
exec "$MYELIN_BIN_DIR/myelin" perf "$@"

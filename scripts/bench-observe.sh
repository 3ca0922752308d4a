#!/usr/bin/env bash
# Flow observability benchmarks (BENCHMARKS.md, "Flow observability"). Run as root on a quiet machine.
#
#   (a) observe-bench pipeline: events made by the kernel's datapath through the ring buffer,
#       decode, enrichment, the in-memory ring and the durable history at fixed offered rates;
#       loss anywhere and the consumer threads' CPU per 100k events/s.
#   (b) observe-bench: the durable history over 10 million flows: append rate, bytes per stored
#       flow, filtered queries (direct, and the GetFlows path with Hubble FlowFilters).
#
#   scripts/bench-observe.sh                       # both, as in BENCHMARKS.md
#   scripts/bench-observe.sh --quick               # smaller: 1M flows, 1 round per rate
# The observability cost on real traffic (myelin vs myelin-noflows) is part of scripts/bench.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "bench-observe: loads eBPF programs: run as root" >&2
  exit 1
fi
cargo build --release -p myelin-observe --bin observe-bench >&2
B=target/release/observe-bench
if [ "${1:-}" = "--quick" ]; then
  "$B" pipeline --rates 250000,1000000 --rounds 1 --seconds 1
  "$B" --records 1000000 --repeat 1
else
  "$B" pipeline --rates 250000,500000,1000000,1500000,2000000 --rounds 5 --seconds 3
  "$B" --records 10000000 --repeat 5
fi

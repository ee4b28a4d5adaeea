#!/usr/bin/env bash
# Runs the criterion benchmarks and prints speed ratios against the baselines measured in the
# same run (absolute times are not comparable across runs on a shared machine).
# Usage: scripts/bench.sh [criterion filter]   (raw results: target/bench.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >/dev/null
cargo bench -p pktcrypt-benches --locked -- --output-format bencher "$@" | tee target/bench.txt
python3 scripts/bench_ratios.py target/bench.txt

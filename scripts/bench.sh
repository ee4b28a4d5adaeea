#!/usr/bin/env bash
# Runs the AEAD criterion benchmarks (benches/benches/aead.rs) and prints speed ratios against
# ring measured in the same run (absolute times are not comparable across runs on a shared
# machine). RUNS=N repeats the whole suite N times (criterion baselines r1..rN) and prints the
# median ratio and its range over the runs.
# Usage: [RUNS=3] scripts/bench.sh [criterion filter, e.g. '^seal/aes-256-gcm/']
# Raw results: target/criterion/<group>/<candidate>/rN/ and target/bench.txt (the ratios).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >/dev/null
runs=()
for i in $(seq 1 "${RUNS:-1}"); do
  echo "== run $i of ${RUNS:-1}, $(uptime)" >&2
  cargo bench -p pktcrypt-benches --bench aead --locked -- --save-baseline "r$i" "$@" >&2
  runs+=("r$i")
done
echo "load average after the runs: $(cut -d' ' -f1-3 /proc/loadavg)" | tee target/bench.txt
python3 scripts/bench_ratios.py --runs "$(IFS=,; echo "${runs[*]}")" | tee -a target/bench.txt

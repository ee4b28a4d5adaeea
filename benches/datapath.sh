#!/usr/bin/env bash
# Data-path benchmark in the gateway topology (scripts/topology.sh): iperf3 UDP from hostA to
# hostB through gwA and gwB, measured in one run for
#   kernel  - (a) the gateways forward in the kernel, no encryption (baseline)
#   null    - (b) pktcrypt with the no-op cipher (backend "null-insecure", a benchmark-only build
#             feature): everything pktcrypt does except the AEAD
#   aes     - (c) pktcrypt, AES-256-GCM
#   chacha  - (d) pktcrypt, ChaCha20-Poly1305
# at 64 B and 1420 B IP packets, with 1 and 2 workers (= veth queues). For each case two iperf3
# runs: one as fast as possible (packets received per second at hostB), one at a fixed offered
# rate ($RATE pps) for the cost per packet: CPU time of the gateways' worker threads (from
# /proc/PID/task/*/stat; includes idle polling) and the workers' busy time (the `busy_ns`
# counter of `pktcrypt status`: thread CPU time in loop iterations that had packets). Writes target/bench-datapath/results.jsonl and BENCH_DATAPATH.md (table
# and an SVG plot). Needs root. Usage: benches/datapath.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
RATE=${RATE:-30000}   # packets/s of the fixed-rate (cost) runs
REPEAT=${REPEAT:-3}   # fixed-rate runs per case (the cheapest counts)
OUT=target/bench-datapath
mkdir -p "$OUT"
# This binary has the benchmark-only null backend; the installed one does not.
cargo build --release --locked -p pktcrypt --features insecure-null-backend \
  --target-dir target/bench-datapath/build >/dev/null
OBJ=$(./scripts/build-ebpf.sh)
BIN=$PWD/target/bench-datapath/build/release/pktcrypt
P=pb-
DIR=$(mktemp -d /tmp/pktcrypt-bench.XXXXXX)
trap 'pkill -f "pktcrypt up --config $DIR" || true; ./scripts/topology.sh down $P; rm -rf $DIR' EXIT
"$BIN" keygen --count 2 --out "$DIR/keys.txt" >/dev/null
K0=$(sed -n 1p "$DIR/keys.txt")
TICK=$(getconf CLK_TCK)

worker_ticks() { # sum of utime+stime of pktcrypt worker threads in all gateway processes
  local t=0
  for pid in $(pgrep -f "pktcrypt up --config $DIR" || true); do
    for task in /proc/"$pid"/task/*; do
      if grep -q pktcrypt-worker "$task/comm" 2>/dev/null; then
        read -r -a f < "$task/stat"
        # comm may not contain spaces here; fields 14 and 15 are utime and stime
        t=$((t + f[13] + f[14]))
      fi
    done
  done
  echo $t
}

busy_ns() { # sum of the workers' busy_ns of both gateways (0 without gateways)
  local t=0 g v
  for g in A B; do
    [ -S "$DIR/gw$g.sock" ] || continue
    v=$("$BIN" status --socket "$DIR/gw$g.sock" 2>/dev/null \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["workers"]["busy_ns"])' || echo 0)
    t=$((t + v))
  done
  echo $t
}

iperf() { # PAYLOAD BITRATE-PER-STREAM -> iperf3 JSON (UDP, hostA -> hostB, $SECS seconds)
  ip netns exec ${P}hostB iperf3 -s -D -1 -p 5201 >/dev/null 2>&1
  sleep 0.3
  # Two streams, so that with two queues both workers get packets (a veth picks the queue per flow).
  ip netns exec ${P}hostA iperf3 -c 10.2.0.2 -u -P 2 -b "$2" -l "$1" -t "$SECS" -J 2>/dev/null || true
}

run_one() { # MODE WORKERS SIZE -> JSON line
  # Throughput: as fast as the generator can send. Cost per packet: at a fixed offered rate that
  # every mode sustains ($RATE packets/s), so batch sizes (and the kicks they amortise) are alike
  # across modes and the difference per packet is the work, not the load; $REPEAT such runs, and
  # the cheapest counts (on a shared 2-core machine noise only ever adds time).
  local mode=$1 w=$2 size=$3 payload=$(( $3 - 28 ))
  local max; max=$(iperf $payload 0)
  local costs="" i t0 b0 t1 b1 fixed
  for i in $(seq "$REPEAT"); do
    t0=$(worker_ticks); b0=$(busy_ns)
    fixed=$(iperf $payload $(( RATE * payload * 8 / 2 )) | python3 -c \
      'import json,sys
try:
    s = json.load(sys.stdin)["end"]["sum"]; print(s["packets"] - s["lost_packets"])
except Exception:
    print(0)')   # rate per stream
    t1=$(worker_ticks); b1=$(busy_ns)
    costs="$costs $fixed:$((t1 - t0)):$((b1 - b0))"
  done
  python3 - "$mode" "$w" "$size" "$TICK" "$costs" <<PY
import json, sys
mode, w, size, tick = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
runs = [tuple(int(x) for x in c.split(":")) for c in sys.argv[5].split()]
try:
    s = json.loads('''$max''')["end"]["sum"]
    secs, got = s["seconds"], s["packets"] - s["lost_packets"]
except Exception:
    secs, got = 1, 0
pps = got / secs if secs else 0
cpu, busy = None, None
if mode != "kernel":
    per = [(t / tick * 1e9 / n, b / n) for n, t, b in runs if n]
    if per:
        cpu, busy = min(p[0] for p in per), min(p[1] for p in per)
print(json.dumps({"mode": mode, "workers": w, "size": size, "pps": pps, "received": got,
                  "fixed_rate_runs": len(runs), "fixed_rate_received": [r[0] for r in runs],
                  "worker_cpu_ns_per_packet": cpu, "worker_busy_ns_per_packet": busy}))
PY
}

start_gateways() { # SUITE BACKEND
  cat > "$DIR/gwB.toml" <<CFG
role = "server"
name = "gwB"
inner = "in"
outer = "out"
xdp_object = "$OBJ"
status_socket = "$DIR/gwB.sock"
suite = "$1"
backend = "$2"
rekey_interval_ms = 0
status_interval_ms = 0
prefixes = ["10.2.0.0/24"]
[[clients]]
name = "gwA"
address = "192.0.2.1"
prefixes = ["10.1.0.0/24"]
init_key = "$K0"
CFG
  cat > "$DIR/gwA.toml" <<CFG
role = "client"
name = "gwA"
inner = "in"
outer = "out"
xdp_object = "$OBJ"
status_socket = "$DIR/gwA.sock"
backend = "$2"
status_interval_ms = 0
prefixes = ["10.1.0.0/24"]
[server]
name = "gwB"
address = "192.0.2.2"
prefixes = ["10.2.0.0/24"]
init_key = "$K0"
CFG
  for g in B A; do
    ip netns exec ${P}gw$g "$BIN" up --config "$DIR/gw$g.toml" >"$DIR/gw$g.log" 2>&1 &
  done
  for _ in $(seq 50); do ip netns exec ${P}hostA ping -c1 -W1 10.2.0.2 >/dev/null 2>&1 && break; done
}

# Worker scaling of the packet path alone (no kernel, no generator), on the idle machine first.
cargo bench -q --locked -p pktcrypt-benches --bench workers 2>/dev/null | grep '^{' > "$OUT/workers.jsonl"
cat "$OUT/workers.jsonl"

: > "$OUT/results.jsonl"
for w in 1 2; do
  QUEUES=$w ./scripts/topology.sh up $P >/dev/null
  # kernel forwarding baseline
  for g in A B; do ip netns exec ${P}gw$g sysctl -qw net.ipv4.ip_forward=1; done
  ip -n ${P}gwA route add 10.2.0.0/24 via 192.0.2.2
  ip -n ${P}gwB route add 10.1.0.0/24 via 192.0.2.1
  ip netns exec ${P}hostA ping -c2 -W1 10.2.0.2 >/dev/null
  for size in 64 1420; do run_one kernel $w $size | tee -a "$OUT/results.jsonl"; done
  ip -n ${P}gwA route del 10.2.0.0/24; ip -n ${P}gwB route del 10.1.0.0/24
  for g in A B; do ip netns exec ${P}gw$g sysctl -qw net.ipv4.ip_forward=0; done
  for mode in null aes chacha; do
    suite=aes-256-gcm; [ $mode = chacha ] && suite=chacha20-poly1305
    backend=default; [ $mode = null ] && backend=null-insecure
    start_gateways $suite $backend
    for size in 64 1420; do run_one $mode $w $size | tee -a "$OUT/results.jsonl"; done
    pkill -TERM -f "pktcrypt up --config $DIR" || true; sleep 1.5
  done
  ./scripts/topology.sh down $P
done
python3 scripts/bench_datapath_report.py "$OUT/results.jsonl" BENCH_DATAPATH.md "$OUT/workers.jsonl"

#!/usr/bin/env bash
# Data-path benchmark: pktcrypt against kernel forwarding and WireGuard (boringtun), in one run.
#
# Topology (scripts/topology.sh): hostA - gwA = wire (bridge) = gwB - hostB, four network
# namespaces on veths, $QUEUES queues per veth, tx offload off on every veth, hosts' MTU 1400
# (so every mode carries the same packets: 1400 B fits WireGuard's 1420 B tunnel MTU and
# pktcrypt's 1434 B). Modes, set up and torn down in turn within each round (the order rotates
# from round to round), $RUNS rounds:
#   sink      - no gateway: the generator alone, into hostA's veth, dropped by XDP on gwA's end
#               (`xdp-filter`, policy deny): what the generator can offer at most
#   kernel    - the gateways forward in the kernel (ip_forward=1, routes), no encryption
#   aes       - pktcrypt, AES-256-GCM (the default backend)
#   chacha    - pktcrypt, ChaCha20-Poly1305
#   null      - pktcrypt with the no-op cipher (backend "null-insecure", a benchmark-only build
#               feature): everything pktcrypt does but the AEAD, for the cipher's share
#   boringtun - boringtun-cli (userspace WireGuard on TUN, $BORINGTUN_THREADS threads per
#               gateway) configured with `wg`, the gateways forwarding between veth and TUN
# Tests in every mode (received rates are counted at hostB, never offered):
#   gen-udp  SIZE  trafgen (netsniff-ng; AF_PACKET TX ring, one process pinned to CPU 0, 16
#                  flows) as fast as it can, $SECS s; received = hostB's IP InReceives
#   iperf-udp SIZE iperf3 UDP, unlimited rate, $QUEUES streams, client pinned to CPU 0; received
#                  = packets the server got (iperf3's own accounting)
#   tcp            iperf3 TCP, $QUEUES streams, client pinned to CPU 0
#   cost SIZE      trafgen at a steady $RATE packets/s: the CPU each party spends per packet
#                  (pktcrypt workers' busy_ns and thread CPU, boringtun's threads, the machine).
#                  Packets evenly spaced: trafgen sleeps between packets (`--gap`, calibrated
#                  against the machine at the start: $GAP_NS). Not trafgen's `--rate`: that sends
#                  each second's packets in one burst at full speed (measured: 30,000 packets in
#                  150 ms at 200 kpackets/s, then nothing for 850 ms).
# at IP sizes 64 B and 1400 B. Before the tests of a mode, $IDLE s without traffic measure the
# daemons' idle CPU (a spinning thread shows there). Around every test,
# benches/datapath_measure.py samples the CPU of every party: generator, receiver, each
# gateway's worker / control / other threads, softirq and idle per CPU, and the load average.
#
# Writes target/bench-datapath/results.jsonl and, through scripts/bench_datapath_report.py,
# BENCH_DATAPATH.md with bench-datapath.svg and bench-datapath-cost.svg.
#
# usage (root): benches/datapath.sh            full run: RUNS=5, SECS=5 (about 22 minutes)
#               QUICK=1 benches/datapath.sh    smoke run: RUNS=1, SECS=2, writes the report into
#                                              target/bench-datapath/ only (about 3 minutes)
# Environment: RUNS, SECS, RATE (30000), GAP_NS (trafgen's gap for RATE; calibrated if unset), QUEUES (2), MODES ("sink kernel aes aes-generic
# chacha null boringtun"), SIZES ("64 1400"), BORINGTUN_THREADS ($QUEUES), IDLE (2), REPORT (the report's
# path; default BENCH_DATAPATH.md, or target/bench-datapath/BENCH_DATAPATH.md with QUICK=1),
# WORKERS_BENCH=1 also runs the worker-scaling criterion bench (benches/benches/workers.rs) first,
# NOTE="text" puts a note at the top of the report, LOCK another lock file (development only).
# Needs netsniff-ng, xdp-tools, wireguard-tools, iperf3 and boringtun-cli: `scripts/setup.sh
# --bench` installs them (this script runs it). Other sessions use namespaces too: the run holds
# /tmp/pktcrypt-netns.lock.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
if [ "${QUICK:-0}" = 1 ]; then
  RUNS=${RUNS:-1}; SECS=${SECS:-2}; IDLE=${IDLE:-1}
  REPORT=${REPORT:-target/bench-datapath/BENCH_DATAPATH.md}
fi
RUNS=${RUNS:-5}
SECS=${SECS:-5}
RATE=${RATE:-30000}
QUEUES=${QUEUES:-2}
MODES=${MODES:-sink kernel aes aes-generic chacha null boringtun}
SIZES=${SIZES:-64 1400}
BORINGTUN_THREADS=${BORINGTUN_THREADS:-$QUEUES}
IDLE=${IDLE:-2}
REPORT=${REPORT:-BENCH_DATAPATH.md}
MTU=1400
P=pb-
OUT=target/bench-datapath
mkdir -p "$OUT"
for tool in trafgen xdp-filter wg iperf3 ethtool; do
  command -v $tool >/dev/null || { ./scripts/setup.sh --bench >&2; break; }
done
[ -x "$(command -v boringtun-cli || echo "$HOME/.cargo/bin/boringtun-cli")" ] || ./scripts/setup.sh --bench >&2
# One binary for every pktcrypt mode: this build has the benchmark-only null backend.
cargo build --release --locked -p pktcrypt --features insecure-null-backend \
  --target-dir "$OUT/build" >&2
BIN=$ROOT/$OUT/build/release/pktcrypt
BORINGTUN=$(command -v boringtun-cli || echo "$HOME/.cargo/bin/boringtun-cli")
MEASURE=(python3 "$ROOT/benches/datapath_measure.py")
exec 9>"${LOCK:-/tmp/pktcrypt-netns.lock}"
flock 9   # held until the script exits
DIR=$(mktemp -d /tmp/pktcrypt-bench.XXXXXX)
GW_PIDS=()   # the gateway daemons of the current mode (pktcrypt or boringtun), gwA then gwB
GW_MODE=""

cleanup() {
  mode_down || true
  # Whatever mode was up: no daemon outlives the run (nor holds the lock, fd 9).
  for pid in "${GW_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  ./scripts/topology.sh down $P
  rm -rf "$DIR"
}
trap cleanup EXIT
log() { printf '\033[1m[datapath]\033[0m %s\n' "$*" >&2; }

if [ "${WORKERS_BENCH:-0}" = 1 ]; then
  # Worker scaling of the packet path alone (no kernel, no generator), on the idle machine first.
  cargo bench -q --locked -p pktcrypt-benches --bench workers 2>/dev/null | grep '^{' > "$OUT/workers.jsonl"
fi

"$BIN" keygen --count 1 --out "$DIR/keys.txt" >/dev/null
KEY=$(sed -n 1p "$DIR/keys.txt")
QUEUES=$QUEUES ./scripts/topology.sh up $P >/dev/null
# Every veth without tx offload (the topology does the gateways' and hosts' ends; here the
# bridge ports too), the hosts at MTU 1400.
for port in portA portB portC; do ip netns exec ${P}wire ethtool -K $port tx off >/dev/null; done
for h in A B; do ip -n ${P}host$h link set eth0 mtu $MTU; done
# trafgen's packets leave on the queue XPS picks: let every CPU use every queue, so the flow hash
# spreads the 16 flows over the queues (by default AF_PACKET records the sending CPU as the queue).
mask=$(printf '%x' $(( (1 << $(nproc)) - 1 )))
for ((q = 0; q < QUEUES; q++)); do
  ip netns exec ${P}hostA sh -c "echo $mask > /sys/class/net/eth0/queues/tx-$q/xps_cpus"
done
SRC_MAC=$(ip -n ${P}hostA -j link show eth0 | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["address"])')
DST_MAC=$(ip -n ${P}gwA -j link show in | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["address"])')

trafgen_conf() { # IP_SIZE -> a trafgen configuration: 16 UDP flows hostA -> hostB port 9
  python3 - "$1" "$SRC_MAC" "$DST_MAC" <<'PY'
import sys
size, src, dst = int(sys.argv[1]), sys.argv[2], sys.argv[3]
mac = lambda m: ", ".join("0x" + b for b in m.split(":"))
for flow in range(16):
    print("{ %s, %s, c16(0x0800)," % (mac(dst), mac(src)))
    print("  0x45, 0x00, c16(%d), c16(%d), c16(0x4000), 64, 17, csumip(14, 33)," % (size, flow))
    print("  10, 1, 0, 2, 10, 2, 0, 2,")
    print("  c16(%d), c16(9), c16(%d), csumudp(14, 34)," % (40000 + flow, size - 20))
    print("  fill(0x61, %d) }" % (size - 28))
PY
}
for s in $SIZES; do trafgen_conf "$s" > "$DIR/udp$s.cfg"; done

# The gap between trafgen's packets for $RATE packets/s: trafgen sleeps the gap after each
# packet, and the sleep costs more than asked (timer slack, the wake-up; not a constant: a 33 us
# gap gave 14 k packets/s here, a 10 us gap 27 k), so the gap is found by bisection: 1 s at each
# of 6 gaps into gwA's veth with no gateway up (the kernel drops them).
tx_packets() { ip netns exec ${P}hostA cat /sys/class/net/eth0/statistics/tx_packets; }
gap_rate() { # GAP_NS -> packets/s sent
  local a b
  a=$(tx_packets)
  ip netns exec ${P}hostA timeout -s INT 1 trafgen -o eth0 -i "$DIR/udp64.cfg" -P 1 --no-sock-mem \
    --notouch-irq -t "${1}ns" >/dev/null 2>&1 || true
  b=$(tx_packets)
  echo $((b - a))
}
if [ -z "${GAP_NS:-}" ]; then
  [ -f "$DIR/udp64.cfg" ] || trafgen_conf 64 > "$DIR/udp64.cfg"
  lo=1000 hi=$((1000000000 / RATE))
  for _ in 1 2 3 4 5 6; do
    mid=$(((lo + hi) / 2))
    if [ "$(gap_rate "$mid")" -gt "$RATE" ]; then lo=$mid; else hi=$mid; fi
  done
  GAP_NS=$(((lo + hi) / 2))
  log "trafgen gap for $RATE packets/s: ${GAP_NS} ns (measured $(gap_rate "$GAP_NS") packets/s)"
fi

measure() { # LABEL-JSON [measure options] -- command
  local label=$1; shift
  local gw=()
  local i=0 name
  for pid in "${GW_PIDS[@]}"; do
    name=gwA; [ $i = 1 ] && name=gwB
    gw+=(--gateway-pid "$pid" --gateway-name "$name"); i=$((i + 1))
  done
  if [ "$GW_MODE" = pktcrypt ]; then
    gw+=(--bin "$BIN" --status-socket "$DIR/gwA.sock" --status-socket "$DIR/gwB.sock")
  fi
  "${MEASURE[@]}" --label "$label" "${gw[@]}" --tx-ns ${P}hostA --rx-ns ${P}hostB "$@" \
    | tee -a "$OUT/results.jsonl" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
got = (r.get("snmp") or {}).get("Ip.InReceives", 0) / r["seconds"]
sent = (r.get("tx") or {}).get("tx_packets", 0) / r["seconds"]
print("  %-9s %-9s %5s run %s: hostA sent %9.0f, hostB IP got %9.0f pkt/s; load %.2f"
      % (r["mode"], r["test"], r.get("size") or "", r["run"], sent, got, r["load1"]))' >&2
}

wait_ping() {
  for _ in $(seq 60); do ip netns exec ${P}hostA ping -c1 -W1 10.2.0.2 >/dev/null 2>&1 && return 0; done
  log "no path hostA -> hostB in mode $1"; return 1
}

forwarding() { # 0|1
  for g in A B; do ip netns exec ${P}gw$g sysctl -qw net.ipv4.ip_forward="$1"; done
}

pktcrypt_up() { # SUITE BACKEND [XDP_MODE]
  cat > "$DIR/gwB.toml" <<CFG
role = "server"
name = "gwB"
inner = "in"
outer = "out"
status_socket = "$DIR/gwB.sock"
suite = "$1"
backend = "$2"
xdp_mode = "${3:-auto}"
prefixes = ["10.2.0.0/24"]
[[clients]]
name = "gwA"
address = "192.0.2.1"
prefixes = ["10.1.0.0/24"]
init_key = "$KEY"
CFG
  cat > "$DIR/gwA.toml" <<CFG
role = "client"
name = "gwA"
inner = "in"
outer = "out"
status_socket = "$DIR/gwA.sock"
backend = "$2"
xdp_mode = "${3:-auto}"
prefixes = ["10.1.0.0/24"]
[server]
name = "gwB"
address = "192.0.2.2"
prefixes = ["10.2.0.0/24"]
init_key = "$KEY"
CFG
  GW_PIDS=()
  for g in A B; do
    ip netns exec ${P}gw$g "$BIN" up --config "$DIR/gw$g.toml" >"$DIR/gw$g.log" 2>&1 9>&- &
    GW_PIDS+=($!)
  done
  GW_MODE=pktcrypt
}

boringtun_up() {
  local g other port=51820
  for g in A B; do wg genkey > "$DIR/wg$g.key"; wg pubkey < "$DIR/wg$g.key" > "$DIR/wg$g.pub"; done
  GW_PIDS=()
  for g in A B; do
    # Interface names differ: the UAPI socket (/var/run/wireguard/NAME.sock) is not per namespace.
    ip netns exec ${P}gw$g "$BORINGTUN" wg$g --foreground --disable-drop-privileges \
      --threads "$BORINGTUN_THREADS" --log "$DIR/boringtun-$g.log" >/dev/null 2>&1 9>&- &
    GW_PIDS+=($!)
  done
  for g in A B; do
    for _ in $(seq 50); do [ -S /var/run/wireguard/wg$g.sock ] && break; sleep 0.1; done
    other=B; [ $g = B ] && other=A
    local n=1; [ $g = B ] && n=2
    local o=2; [ $g = B ] && o=1
    ip netns exec ${P}gw$g wg set wg$g private-key "$DIR/wg$g.key" listen-port $port \
      peer "$(cat "$DIR/wg$other.pub")" endpoint 192.0.2.$o:$port allowed-ips 10.$o.0.0/24
    ip -n ${P}gw$g link set wg$g mtu 1420 up
    ip -n ${P}gw$g route add 10.$o.0.0/24 dev wg$g
  done
  forwarding 1
  GW_MODE=boringtun
}

mode_up() { # MODE
  case $1 in
    sink)
      # xdp-filter with policy deny and no rules: native XDP that drops every frame (libxdp
      # wants a bpffs, which `ip netns exec`'s fresh /sys lacks).
      ip netns exec ${P}gwA sh -c 'mount -t bpf bpf /sys/fs/bpf && xdp-filter load -m native -p deny -f ethernet in' ;;
    kernel)
      forwarding 1
      ip -n ${P}gwA route add 10.2.0.0/24 via 192.0.2.2
      ip -n ${P}gwB route add 10.1.0.0/24 via 192.0.2.1 ;;
    aes) pktcrypt_up aes-256-gcm default ;;
    aes-generic) pktcrypt_up aes-256-gcm default generic ;;
    chacha) pktcrypt_up chacha20-poly1305 default ;;
    null) pktcrypt_up aes-256-gcm null-insecure ;;
    boringtun) boringtun_up ;;
    *) log "unknown mode $1"; exit 2 ;;
  esac
  CUR_MODE=$1
  [ "$1" = sink ] || wait_ping "$1"
}

mode_down() {
  case ${CUR_MODE:-} in
    sink) ip -n ${P}gwA link set in xdp off || true ;;
    kernel)
      ip -n ${P}gwA route del 10.2.0.0/24 || true
      ip -n ${P}gwB route del 10.1.0.0/24 || true
      forwarding 0 ;;
    aes|aes-generic|chacha|null)
      for pid in "${GW_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
      for pid in "${GW_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
      for g in A B; do ip netns exec ${P}gw$g "$BIN" down --config "$DIR/gw$g.toml" >/dev/null 2>&1 || true; done ;;
    boringtun)
      forwarding 0
      for pid in "${GW_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
      for pid in "${GW_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
      for g in A B; do ip -n ${P}gw$g link del wg$g 2>/dev/null || true; rm -f /var/run/wireguard/wg$g.sock; done ;;
  esac
  CUR_MODE=""; GW_PIDS=(); GW_MODE=""
}

label() { # MODE TEST SIZE RUN [OFFERED-PPS]
  printf '{"mode": "%s", "test": "%s", "size": %s, "run": %s, "queues": %s, "offered_pps": %s}' \
    "$1" "$2" "${3:-null}" "$4" "$QUEUES" "${5:-null}"
}

run_tests() { # MODE RUN
  local mode=$1 run=$2 s
  if [ "$mode" != sink ]; then
    measure "$(label "$mode" idle null "$run")" --idle "$IDLE"
  fi
  for s in $SIZES; do
    # shellcheck disable=SC2046
    measure "$(label "$mode" gen-udp "$s" "$run")" -- \
      ip netns exec ${P}hostA timeout -s INT "$SECS" trafgen -o eth0 -i "$DIR/udp$s.cfg" -P 1 --no-sock-mem --notouch-irq
  done
  [ "$mode" = sink ] && return 0
  for s in $SIZES; do
    measure "$(label "$mode" cost "$s" "$run" "$RATE")" -- \
      ip netns exec ${P}hostA timeout -s INT "$SECS" trafgen -o eth0 -i "$DIR/udp$s.cfg" -P 1 --no-sock-mem --notouch-irq \
        -t "${GAP_NS}ns"
  done
  for s in $SIZES; do
    measure "$(label "$mode" iperf-udp "$s" "$run")" \
      --receiver "ip netns exec ${P}hostB iperf3 -s -1 -J" -- \
      ip netns exec ${P}hostA iperf3 -c 10.2.0.2 -A 0 -u -b 0 -l $((s - 28)) -P "$QUEUES" -t "$SECS" -J
  done
  measure "$(label "$mode" tcp null "$run")" \
    --receiver "ip netns exec ${P}hostB iperf3 -s -1 -J" -- \
    ip netns exec ${P}hostA iperf3 -c 10.2.0.2 -A 0 -P "$QUEUES" -t "$SECS" -J
}

read -r -a modes <<< "$MODES"
start=$(date +%s)
log "$RUNS rounds of: ${modes[*]}; ${SECS}s per test, $QUEUES queues, sizes $SIZES, steady rate $RATE pps; load: $(cut -d' ' -f1-3 /proc/loadavg)"
: > "$OUT/results.jsonl"
for ((run = 1; run <= RUNS; run++)); do
  n=${#modes[@]}
  for ((k = 0; k < n; k++)); do
    mode=${modes[$(( (k + run - 1) % n ))]}
    log "round $run/$RUNS: $mode ($(( $(date +%s) - start )) s so far)"
    if mode_up "$mode"; then
      run_tests "$mode" "$run"
    else
      log "mode $mode did not come up in round $run: skipped"
      for f in "$DIR"/*.log; do [ -e "$f" ] && tail -5 "$f" >&2; done
    fi
    mode_down
  done
done
log "measured in $(( $(date +%s) - start )) s"
python3 - "$OUT/meta.json" "$RUNS" "$SECS" "$RATE" "$QUEUES" "$BORINGTUN_THREADS" "$start" "$MTU" "$GAP_NS" <<'PY'
import json, os, platform, subprocess, sys, time
path, runs, secs, rate, queues, bt, start, mtu, gap = sys.argv[1:]
def out(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "")
json.dump({"runs": int(runs), "seconds": int(secs), "rate": int(rate), "queues": int(queues),
           "boringtun_threads": int(bt), "mtu": int(mtu), "gap_ns": int(gap), "cpus": os.cpu_count(), "cpu": cpu,
           "kernel": platform.release(), "started": int(start), "duration": int(time.time()) - int(start),
           "commit": out("git", "rev-parse", "--short", "HEAD"), "dirty": bool(out("git", "status", "--porcelain", "-uno")),
           "trafgen": out("trafgen", "-v").splitlines()[0] if out("trafgen", "-v") else "",
           "iperf3": out("iperf3", "-v").splitlines()[0] if out("iperf3", "-v") else "",
           "boringtun": out(os.path.expanduser("~/.cargo/bin/boringtun-cli"), "--version")},
          open(path, "w"), indent=1)
PY
extra=()
[ "$REPORT" = BENCH_DATAPATH.md ] && extra=(--benchmarks BENCHMARKS.md)   # its summary block too
[ -n "${NOTE:-}" ] && extra+=(--note "$NOTE")
python3 scripts/bench_datapath_report.py "$OUT/results.jsonl" "$REPORT" "$OUT/meta.json" "$OUT/workers.jsonl" "${extra[@]}"

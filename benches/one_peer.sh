#!/usr/bin/env bash
# One peer over every core: iperf3 UDP from hostA to hostB through gwA (client) and gwB (key
# server) in the namespace topology (scripts/topology.sh), one peer pair, AES-256-GCM, with
#   w1        - 1 worker per gateway (1-queue veths)
#   w2-single - 2 workers, every worker sending from the ESP port (source_ports = "single")
#   w2        - 2 workers, one source port per worker (the default)
# run in turn, $ROUNDS rounds (alternating, so drifting load hits every mode alike). Per run:
# received throughput at hostB, packets each of gwB's workers received, the CPU time of each
# party (gwA workers, gwB workers, both control threads, iperf3 client and server, the rest of
# the machine: kernel softirq and everything else) and the load average before it. Prints one
# JSON line per run and a summary (medians). Needs root and a release build of pktcrypt
# (PKTCRYPT_BIN, default target/release/pktcrypt).
# TOPOLOGY=direct connects the gateways' outer veths directly instead of through the wire
# bridge (there a veth's RX queue is the sender's queue; through the bridge the kernel keeps
# an AF_XDP frame's queue and every packet of one peer reached gwB's queue 0 here).
# Usage: [TOPOLOGY=bridge|direct] benches/one_peer.sh [SECONDS] [ROUNDS] [PAYLOAD]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
ROUNDS=${2:-5}
PAYLOAD=${3:-1372}   # UDP payload: 1400-byte IP packets
STREAMS=${STREAMS:-4}
BIN=${PKTCRYPT_BIN:-$PWD/target/release/pktcrypt}
P=po-
DIR=$(mktemp -d /tmp/pktcrypt-onepeer.XXXXXX)
OUT=${OUT:-$DIR/results.jsonl}
GWPIDS=()
stop_gateways() {
  for pid in "${GWPIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${GWPIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  GWPIDS=()
}
TOPOLOGY=${TOPOLOGY:-bridge}
topo_up() { # QUEUES
  if [ "$TOPOLOGY" = bridge ]; then QUEUES=$1 ./scripts/topology.sh up $P >/dev/null; return; fi
  local n q="numtxqueues $1 numrxqueues $1"
  for n in hostA gwA gwB hostB; do ip netns del $P$n 2>/dev/null || true; ip netns add $P$n; ip -n $P$n link set lo up; done
  ip link add in netns ${P}gwA $q type veth peer eth0 netns ${P}hostA $q
  ip link add in netns ${P}gwB $q type veth peer eth0 netns ${P}hostB $q
  ip link add out netns ${P}gwA $q type veth peer out netns ${P}gwB $q
  for s in A:1 B:2; do
    g=${s%:*}; n=${s#*:}
    ip -n ${P}host$g addr add 10.$n.0.2/24 dev eth0; ip -n ${P}host$g link set eth0 up
    ip -n ${P}host$g route add default via 10.$n.0.1
    ip -n ${P}gw$g addr add 10.$n.0.1/24 dev in; ip -n ${P}gw$g link set in up
    ip -n ${P}gw$g addr add 192.0.2.$n/24 dev out; ip -n ${P}gw$g link set out up
    ip netns exec ${P}gw$g sysctl -qw net.ipv4.ip_forward=0 net.ipv6.conf.all.forwarding=0
    for i in in out; do ip netns exec ${P}gw$g ethtool -K $i tx off >/dev/null; done
    ip netns exec ${P}host$g ethtool -K eth0 tx off >/dev/null
  done
}
topo_down() {
  ./scripts/topology.sh down $P
  for n in hostA gwA gwB hostB; do ip netns del $P$n 2>/dev/null || true; done
}
trap 'stop_gateways; topo_down; echo "results: $OUT" >&2' EXIT
"$BIN" keygen --count 1 --out "$DIR/keys.txt" >/dev/null
K0=$(grep '^pkc1-' "$DIR/keys.txt" | head -1)
TICK=$(getconf CLK_TCK)

start_gateways() { # SOURCE_PORTS
  cat > "$DIR/gwB.toml" <<CFG
role = "server"
name = "gwB"
inner = "in"
outer = "out"
status_socket = "$DIR/gwB.sock"
rekey_interval_ms = 0
status_interval_ms = 0
prefixes = ["10.2.0.0/24"]
source_ports = "$1"
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
status_socket = "$DIR/gwA.sock"
status_interval_ms = 0
prefixes = ["10.1.0.0/24"]
source_ports = "$1"
[server]
name = "gwB"
address = "192.0.2.2"
prefixes = ["10.2.0.0/24"]
init_key = "$K0"
CFG
  for g in B A; do
    ip netns exec ${P}gw$g "$BIN" up --config "$DIR/gw$g.toml" >"$DIR/gw$g.log" 2>&1 &
    GWPIDS+=($!)
  done
  for _ in $(seq 50); do ip netns exec ${P}hostA ping -c1 -W1 10.2.0.2 >/dev/null 2>&1 && return; done
  echo "no tunnel" >&2; exit 1
}

threads() { # PID -> "comm utime+stime" per thread
  for task in /proc/"$1"/task/*; do
    read -r -a f < "$task/stat" || continue
    echo "$(cat "$task/comm") $((f[13] + f[14]))"
  done
}

snapshot() { # -> JSON of cumulative ticks per party, machine total and idle
  python3 - "$TICK" "${GWPIDS[0]}" "${GWPIDS[1]}" <<'PY'
import json, os, sys
tick, gwb, gwa = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def threads(pid):
    out = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            s = open(f"/proc/{pid}/task/{t}/stat").read()
        except OSError:
            continue
        comm = s[s.index("(") + 1:s.rindex(")")]
        f = s[s.rindex(")") + 2:].split()
        out.setdefault(comm, 0)
        out[comm] += int(f[11]) + int(f[12])
    return out
def procs(name):
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            s = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        if s[s.index("(") + 1:s.rindex(")")] == name:
            f = s[s.rindex(")") + 2:].split()
            total += int(f[11]) + int(f[12])
    return total
cpu = [int(x) for x in open("/proc/stat").readline().split()[1:]]
snap = {"total": sum(cpu[:8]), "idle": cpu[3] + cpu[4], "softirq": cpu[6]}
for name, pid in (("gwB", gwb), ("gwA", gwa)):
    th = threads(pid)
    snap[name + "_workers"] = sum(v for k, v in th.items() if k.startswith("pktcrypt-worker"))
    snap[name + "_other"] = sum(v for k, v in th.items() if not k.startswith("pktcrypt-worker"))
snap["iperf3"] = procs("iperf3")
print(json.dumps(snap))
PY
}

per_worker_rx() { # gwB's per-worker rx_outer
  "$BIN" status --socket "$DIR/gwB.sock" | python3 -c \
    'import json,sys; print(json.dumps([w["rx_outer"] for w in json.load(sys.stdin)["per_worker"]]))'
}

run() { # MODE
  ip netns exec ${P}hostB iperf3 -s -D -1 -p 5201 >/dev/null 2>&1
  sleep 0.3
  local load rx0 rx1 s0 s1 res
  load=$(cut -d' ' -f1 /proc/loadavg)
  rx0=$(per_worker_rx); s0=$(snapshot)
  res=$(ip netns exec ${P}hostA iperf3 -c 10.2.0.2 -u -P "$STREAMS" -b 0 -l "$PAYLOAD" -t "$SECS" -J 2>/dev/null || true)
  s1=$(snapshot); rx1=$(per_worker_rx)
  python3 - "$1" "$load" "$rx0" "$rx1" "$s0" "$s1" "$TICK" "$PAYLOAD" <<PY
import json, sys
mode, load = sys.argv[1], float(sys.argv[2])
rx0, rx1, s0, s1 = (json.loads(a) for a in sys.argv[3:7])
tick, payload = int(sys.argv[7]), int(sys.argv[8])
try:
    s = json.loads('''$res''')["end"]["sum"]
    secs, got = s["seconds"], s["packets"] - s["lost_packets"]
except Exception:
    secs, got = 1, 0
d = {k: s1[k] - s0[k] for k in s0}
wall = d["total"] / 2  # ticks per CPU over the run (2 CPUs)
cpu = {k: round(d[k] / wall, 3) for k in ("gwA_workers", "gwB_workers", "gwA_other", "gwB_other", "iperf3", "softirq")}
cpu["machine_busy"] = round((d["total"] - d["idle"]) / wall, 3)
print(json.dumps({"mode": mode, "load1": load, "pps": round(got / secs), "gbps": round(got * (payload + 28) * 8 / secs / 1e9, 3),
                  "gwB_rx_per_worker": [b - a for a, b in zip(rx0, rx1)], "cpu_cores": cpu}))
PY
}

for round in $(seq "$ROUNDS"); do
  for mode in w1 w2-single w2; do
    q=2; sp=per-worker
    [ $mode = w1 ] && q=1
    [ $mode = w2-single ] && sp=single
    topo_up $q
    start_gateways $sp
    run $mode | tee -a "$OUT"
    stop_gateways
    topo_down
  done
done
python3 - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
base = statistics.median(r["gbps"] for r in rows if r["mode"] == "w1")
for mode in ("w1", "w2-single", "w2"):
    rs = [r for r in rows if r["mode"] == mode]
    g = sorted(r["gbps"] for r in rs)
    print(f"{mode:10} median {statistics.median(g):.3f} Gb/s (min {g[0]:.3f}, max {g[-1]:.3f}, n={len(g)}), "
          f"x{statistics.median(g) / base:.2f} of w1; load1 median {statistics.median(r['load1'] for r in rs):.2f}; "
          f"gwB workers {statistics.median(r['cpu_cores']['gwB_workers'] for r in rs):.2f} cores, "
          f"gwA workers {statistics.median(r['cpu_cores']['gwA_workers'] for r in rs):.2f}, "
          f"iperf3 {statistics.median(r['cpu_cores']['iperf3'] for r in rs):.2f}, "
          f"softirq {statistics.median(r['cpu_cores']['softirq'] for r in rs):.2f}, "
          f"machine {statistics.median(r['cpu_cores']['machine_busy'] for r in rs):.2f}")
PY

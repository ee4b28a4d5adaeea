#!/usr/bin/env bash
# What an idle gateway's control thread costs: two gateways of scripts/topology.sh (gwB the key
# server, gwA its client) with the tunnel up and no traffic. Over SECONDS it reports, per
# gateway, the CPU time of the control thread (the main thread) and of all the daemon's threads
# (time on CPU from /proc/PID/task/TID/schedstat, in ns), of the children it reaped (cutime +
# cstime from /proc/PID/stat, in clock ticks), and the processes both daemons forked (perf's
# sched:sched_process_fork on their threads).
#
# EXTRA=N configures N more clients on the key server whose addresses exist on the wire (so
# their next hops resolve) but that never connect: a hub with many peers.
#
# usage (root): benches/control-idle.sh BIN OBJECT [SECONDS]   (PREFIX=ci- the namespaces)
# Other agents or tests use scripts/topology.sh too: run it under
# `flock /tmp/pktcrypt-netns.lock`.
set -euo pipefail
BIN=$(readlink -f "${1:?the pktcrypt binary}")
OBJECT=$(readlink -f "${2:?the compiled XDP object}")
SECS=${3:-10}
P=${PREFIX:-ci-}
EXTRA=${EXTRA:-0}
[ "$EXTRA" -le 100 ] || { echo "EXTRA: at most 100" >&2; exit 2; }
here=$(cd "$(dirname "$0")/.." && pwd)
dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  bash "$here/scripts/topology.sh" down "$P"
  rm -rf "$dir"
}
trap cleanup EXIT

"$BIN" keygen --count $((2 + EXTRA)) --out "$dir/keys.txt" 2>/dev/null
mapfile -t keys < <(grep '^pkc1-' "$dir/keys.txt")
QUEUES=1 bash "$here/scripts/topology.sh" up "$P"

{
  printf 'role = "server"\nname = "gwB"\ninner = "in"\nouter = "out"\nxdp_object = "%s"\n' "$OBJECT"
  printf 'status_socket = "%s/gwB.sock"\nstatus_interval_ms = 0\nprefixes = ["10.2.0.0/24"]\n' "$dir"
  printf '\n[[clients]]\nname = "gwA"\naddress = "192.0.2.1"\nprefixes = ["10.1.0.0/24"]\ninit_key = "%s"\n' "${keys[0]}"
  for ((i = 0; i < EXTRA; i++)); do
    # 192.0.2.150 + i, behind it 172.16.i.0/24 (distinct, unused).
    printf '\n[[clients]]\nname = "extra%d"\naddress = "192.0.2.%d"\nprefixes = ["172.%d.%d.0/24"]\ninit_key = "%s"\n' \
      "$i" $((150 + i)) $((16 + i / 256)) $((i % 256)) "${keys[$((2 + i))]}"
  done
} >"$dir/gwB.toml"
for ((i = 0; i < EXTRA; i++)); do
  ip -n "${P}wire" addr add "192.0.2.$((150 + i))/24" dev br0
done
{
  printf 'role = "client"\nname = "gwA"\ninner = "in"\nouter = "out"\nxdp_object = "%s"\n' "$OBJECT"
  printf 'status_socket = "%s/gwA.sock"\nstatus_interval_ms = 0\nprefixes = ["10.1.0.0/24"]\n' "$dir"
  printf '\n[server]\nname = "gwB"\naddress = "192.0.2.2"\nprefixes = ["10.2.0.0/24"]\ninit_key = "%s"\n' "${keys[0]}"
} >"$dir/gwA.toml"

for g in gwB gwA; do
  ip netns exec "$P$g" "$BIN" up --config "$dir/$g.toml" >"$dir/$g.log" 2>&1 &
  pids+=($!)
done
up=0
for _ in $(seq 60); do
  if ip netns exec "${P}hostA" ping -c1 -W1 10.2.0.2 >/dev/null 2>&1; then up=1; break; fi
done
[ "$up" = 1 ] || { echo "tunnel did not come up" >&2; cat "$dir"/*.log >&2; exit 1; }
sleep 2

hz=$(getconf CLK_TCK)
# children PID: cutime + cstime in ms.
children() {
  awk -v hz="$hz" '{ sub(/.*\) /, ""); print ($14 + $15) * 1000 / hz }' "/proc/$1/stat"
}
# oncpu PID [TID]: ns on CPU of thread TID, or of every thread of PID.
oncpu() {
  if [ $# = 2 ]; then cut -d' ' -f1 "/proc/$1/task/$2/schedstat"; else
    cat /proc/"$1"/task/*/schedstat | awk '{ s += $1 } END { print s }'
  fi
}
# ms NS1 NS0: the difference in ms.
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (a - b) / 1e6 }'; }
declare -A c0 a0 r0
for i in 0 1; do
  p=${pids[$i]}
  c0[$i]=$(oncpu "$p" "$p")
  a0[$i]=$(oncpu "$p")
  r0[$i]=$(children "$p")
done
forks=$(perf stat -x, -e sched:sched_process_fork --pid "$(IFS=,; echo "${pids[*]}")" -- sleep "$SECS" 2>&1 \
  | awk -F, '/sched_process_fork/ { print $1 }')
printf '%-4s %8s %12s %12s %12s\n' gw seconds control_ms daemon_ms children_ms
for i in 0 1; do
  p=${pids[$i]}
  printf '%-4s %8s %12.2f %12.2f %12d\n' "$([ "$i" = 0 ] && echo gwB || echo gwA)" "$SECS" \
    "$(ms "$(oncpu "$p" "$p")" "${c0[$i]}")" "$(ms "$(oncpu "$p")" "${a0[$i]}")" \
    $(($(children "$p") - r0[$i]))
done
echo "forks by both daemons in ${SECS} s: $forks"

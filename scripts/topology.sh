#!/usr/bin/env bash
# Network namespaces for the gateway demo, tests and benchmark:
#
#   hostA(10.1.0.2) ─ gwA ═╗                 ╔═ gwB ─ hostB(10.2.0.2)     (gwB: key server)
#                          ╠══ wire (bridge) ╣
#   hostC(10.3.0.2) ─ gwC ═╝  192.0.2.0/24   (gwA 192.0.2.1, gwB .2, gwC .3)
#                             2001:db8::/64  (gwA 2001:db8::1, gwB ::2, gwC ::3)
#
# The wire namespace itself has 192.0.2.100 and 2001:db8::100 on its bridge (where a group
# controller without a data path can run).
# Each gateway has an inner veth (`in`, 10.X.0.1) and an outer veth (`out`); all veths have
# $QUEUES queues (default 2) so that up to that many workers can run. Gateways do not forward
# (ip_forward=0): only pktcrypt carries traffic between the sites.
#
# usage: topology.sh up [PREFIX] | down [PREFIX]   (namespace names start with PREFIX, default pc-)
set -euo pipefail
cmd=${1:?up or down}
P=${2:-pc-}
QUEUES=${QUEUES:-2}
NS=("${P}hostA" "${P}gwA" "${P}hostB" "${P}gwB" "${P}hostC" "${P}gwC" "${P}wire")

down() {
  for ns in "${NS[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
}

if [ "$cmd" = down ]; then down; exit 0; fi
[ "$cmd" = up ] || { echo "usage: $0 up|down [PREFIX]" >&2; exit 2; }
down
for ns in "${NS[@]}"; do
  ip netns add "$ns"
  ip -n "$ns" link set lo up
done
ip -n "${P}wire" link add br0 type bridge
ip -n "${P}wire" link set br0 up
ip -n "${P}wire" addr add 192.0.2.100/24 dev br0
ip -n "${P}wire" addr add 2001:db8::100/64 dev br0 nodad

site() { # site LETTER NUMBER
  local h="${P}host$1" g="${P}gw$1" n=$2
  ip link add in netns "$g" numtxqueues "$QUEUES" numrxqueues "$QUEUES" type veth \
    peer eth0 netns "$h" numtxqueues "$QUEUES" numrxqueues "$QUEUES"
  ip -n "$h" addr add "10.$n.0.2/24" dev eth0
  ip -n "$h" addr add "fd0$n::2/64" dev eth0 nodad
  ip -n "$h" link set eth0 up
  ip -n "$h" route add default via "10.$n.0.1"
  ip -n "$h" -6 route add default via "fd0$n::1"
  ip -n "$g" addr add "10.$n.0.1/24" dev in
  ip -n "$g" addr add "fd0$n::1/64" dev in nodad
  ip -n "$g" link set in up
  ip link add out netns "$g" numtxqueues "$QUEUES" numrxqueues "$QUEUES" type veth \
    peer "port$1" netns "${P}wire" numtxqueues "$QUEUES" numrxqueues "$QUEUES"
  ip -n "${P}wire" link set "port$1" master br0 up
  ip -n "$g" addr add "192.0.2.$3/24" dev out
  ip -n "$g" addr add "2001:db8::$3/64" dev out nodad
  ip -n "$g" link set out up
  ip netns exec "$g" sysctl -qw net.ipv4.ip_forward=0 net.ipv6.conf.all.forwarding=0
  # Native XDP on a veth needs GRO on the receiving side; offloads off keeps frames whole.
  # Checksums are filled in by the sender (no offload): XDP sees complete frames.
  for d in in out; do ip netns exec "$g" ethtool -K "$d" tx off >/dev/null; done
  ip netns exec "$h" ethtool -K eth0 tx off >/dev/null
}
site A 1 1
site B 2 2
site C 3 3

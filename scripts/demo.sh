#!/usr/bin/env bash
# The main job: on a fresh machine, installs what is needed, builds pktcrypt (its XDP program is
# the compiled object embedded in the binary: no eBPF toolchain needed), creates three sites in
# network namespaces (scripts/topology.sh), starts the key server gateway (gwB) and two client
# gateways (gwA, gwC) with `pktcrypt up` on real veth interfaces, and shows:
# traffic flowing encrypted (ping, a TCP transfer, a capture of the wire), a rekey every second
# without loss, `pktcrypt show`; then tears everything down. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
./scripts/setup.sh
step() { printf '\n\033[1;34m==> %s\033[0m\n' "$*"; }
step "building (release)"
cargo build --release --locked -p pktcrypt
BIN=$ROOT/target/release/pktcrypt
DIR=$(mktemp -d /tmp/pktcrypt-demo.XXXXXX)
P=pd-
cleanup() {
  pkill -TERM -f "pktcrypt up --config $DIR" 2>/dev/null || true
  sleep 1
  ./scripts/topology.sh down "$P"
  rm -rf "$DIR"
}
trap cleanup EXIT

step "three sites in network namespaces: hostA-gwA, hostB-gwB (key server), hostC-gwC, joined by a bridge"
QUEUES=2 ./scripts/topology.sh up "$P"
"$BIN" keygen --count 2 --out "$DIR/keys.txt" >/dev/null
K0=$(sed -n 1p "$DIR/keys.txt"); K1=$(sed -n 2p "$DIR/keys.txt")
cat > "$DIR/gwB.toml" <<CFG
role = "server"
name = "gwB"
inner = "in"
outer = "out"
status_socket = "$DIR/gwB.sock"
rekey_interval_ms = 1000
status_interval_ms = 0
prefixes = ["10.2.0.0/24", "fd02::/64"]   # the networks behind gwB
hub = true                                # forward between its clients (A <-> C)

[[clients]]
name = "gwA"
address = "192.0.2.1"
prefixes = ["10.1.0.0/24", "fd01::/64"]
init_key = "$K0"

[[clients]]
name = "gwC"
address = "192.0.2.3"
prefixes = ["10.3.0.0/24", "fd03::/64"]
init_key = "$K1"
CFG
for site in A:1:$K0:3 C:3:$K1:1; do
  IFS=: read -r L N K O <<<"$site"
  cat > "$DIR/gw$L.toml" <<CFG
role = "client"
name = "gw$L"
inner = "in"
outer = "out"
status_socket = "$DIR/gw$L.sock"
status_interval_ms = 0
prefixes = ["10.$N.0.0/24", "fd0$N::/64"]

[server]
name = "gwB"
address = "192.0.2.2"
prefixes = ["10.2.0.0/24", "fd02::/64", "10.$O.0.0/24"]
init_key = "$K"
CFG
done
for g in B A C; do
  ip netns exec "${P}gw$g" "$BIN" up --config "$DIR/gw$g.toml" >"$DIR/gw$g.log" 2>&1 &
done
for _ in $(seq 50); do ip netns exec "${P}hostA" ping -c1 -W1 10.2.0.2 >/dev/null 2>&1 && break; done
head -1 "$DIR/gwB.log"; head -1 "$DIR/gwA.log"

step "ping hostA → hostB (IPv4 and IPv6) and hostC → hostA (through the hub gwB)"
ip netns exec "${P}hostA" ping -c3 -i 0.2 10.2.0.2 | tail -2
ip netns exec "${P}hostA" ping -6 -c3 -i 0.2 fd02::2 | tail -2
ip netns exec "${P}hostC" ping -c3 -i 0.2 10.1.0.2 | tail -2

step "TCP transfer hostA → hostB (iperf3, 3 s) while capturing the wire"
ip netns exec "${P}wire" tcpdump -ni br0 -s 96 -w "$DIR/wire.pcap" >/dev/null 2>&1 &
CAP=$!
sleep 0.5
ip netns exec "${P}hostB" iperf3 -s -D -1
sleep 0.3
ip netns exec "${P}hostA" iperf3 -c 10.2.0.2 -t 3 | tail -4
sleep 0.5; kill -INT $CAP; wait $CAP 2>/dev/null || true
echo "on the wire: $(tcpdump -nr "$DIR/wire.pcap" 'udp port 4500' 2>/dev/null | wc -l) ESP-in-UDP packets," \
  "$(tcpdump -nr "$DIR/wire.pcap" 'net 10.0.0.0/8 or net fd00::/8' 2>/dev/null | wc -l) with inner addresses in the clear; a sample:"
tcpdump -nr "$DIR/wire.pcap" -c 3 'udp port 4500' 2>/dev/null | cut -c1-110

step "rekey every second under traffic: 10 s of ping at 100 packets/s"
gen() { "$BIN" status --socket "$DIR/gwB.sock" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(max(s["generation"] for s in d["peers"][0]["sas"]))'; }
G0=$(gen)
ip netns exec "${P}hostA" ping -q -c 1000 -i 0.01 -W 1 10.2.0.2 | tail -2
G1=$(gen)
echo "key generations for gwA: $G0 → $G1 ($((G1 - G0)) rotations)"

step "pktcrypt show (gwA)"
# The operator's view; `pktcrypt show --json` (or `pktcrypt status`) is the same as JSON.
"$BIN" show --socket "$DIR/gwA.sock"

step "stopping the gateways: their XDP programs stay (fail closed) until 'pktcrypt down'"
pkill -TERM -f "pktcrypt up --config $DIR" || true
sleep 1.5
tail -1 "$DIR/gwA.log"
if ! grep -q xdp <<<"$(ip -n "${P}gwA" link show)"; then echo "XDP detached on stop: fail open!"; exit 1; fi
ip netns exec "${P}hostA" ping -c 3 -i 0.2 -W 1 10.2.0.2 >/dev/null 2>&1 \
  && { echo "traffic crossed a stopped gateway!"; exit 1; }
echo "stopped gateways drop the protected traffic (hostA -> hostB: no answer)"
for g in A B C; do ip netns exec "${P}gw$g" "$BIN" down --config "$DIR/gw$g.toml"; done
if grep -q xdp <<<"$(ip -n "${P}gwA" link show)"; then echo "XDP still attached!"; exit 1; fi
echo "no XDP program left on the gateways' interfaces after 'pktcrypt down'"

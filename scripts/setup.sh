#!/usr/bin/env bash
# Installs everything pktcrypt's build, demo and tests need on a fresh Debian 12 machine.
# Idempotent: every step checks before it installs. Run as root (or with sudo).
#   scripts/setup.sh           what the build and the tests need (CI)
#   scripts/setup.sh --bench   also the data-path benchmark's tools (benches/datapath.sh):
#                              netsniff-ng (trafgen), xdp-tools, wireguard-tools, boringtun-cli
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=0
case "${1:-}" in
  "") ;;
  --bench) BENCH=1 ;;
  *) echo "usage: $0 [--bench]" >&2; exit 2 ;;
esac

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# Debian packages: OpenSSL headers (benchmark baseline), pkg-config, Python, a C and C++ compiler
# (C tests; libFuzzer for cargo-fuzz; AWS-LC, which aws-lc-sys builds with the cc crate: no cmake
# or NASM needed on Linux), make and valgrind (C tests); iproute2, ping, tcpdump and iperf3 for the
# gateway tests, demo and benchmark in network namespaces; tshark for the test that Wireshark
# decrypts the gateways' captures with the exported keys (userspace/pktcrypt/tests/wireshark.rs).
APT_PACKAGES=(pkg-config libssl-dev python3 python3-venv ca-certificates gcc g++ make valgrind iproute2 iputils-ping tcpdump iperf3 ethtool tshark)
# The benchmark's generator (trafgen), XDP sink (xdp-bench) and WireGuard's `wg`.
[ "$BENCH" = 1 ] && APT_PACKAGES+=(netsniff-ng xdp-tools wireguard-tools)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  grep -q "install ok installed" <<<"$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Rust: the pinned toolchain (rust-toolchain.toml) with rustfmt and clippy, and a nightly with
# rust-src for cargo-fuzz.
if ! command -v rustup >/dev/null 2>&1; then
  echo "rustup is required (https://rustup.rs); none found on PATH" >&2
  exit 1
fi
rustup show active-toolchain >/dev/null 2>&1 || rustup toolchain install "$(sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml)"
rustup component add rustfmt clippy >/dev/null 2>&1
if ! grep -q '^nightly' <<<"$(rustup toolchain list)"; then
  log "rustup toolchain install nightly"
  rustup toolchain install nightly --profile minimal
fi
grep -q '^rust-src' <<<"$(rustup component list --toolchain nightly --installed 2>/dev/null)" \
  || rustup component add rust-src --toolchain nightly

# cargo-fuzz (built from crates.io).
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "cargo install cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi

# cbindgen regenerates the C header (CI fails if it differs from the checked-in one).
if ! grep -q '0.29' <<<"$(cbindgen --version 2>/dev/null)"; then
  log "cargo install cbindgen"
  cargo install cbindgen --version '^0.29' --locked --quiet
fi

# Python: a virtual environment with the independent ESP decryptor's dependency.
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
  log "python3 -m venv $VENV"
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import cryptography' >/dev/null 2>&1; then
  log "pip install cryptography"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check 'cryptography>=42'
fi
# boringtun (userspace WireGuard), the benchmark's other tunnel.
if [ "$BENCH" = 1 ] && ! command -v boringtun-cli >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/boringtun-cli" ]; then
  log "cargo install boringtun-cli"
  cargo install boringtun-cli --locked --quiet
fi
log "ready"

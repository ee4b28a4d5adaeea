#!/usr/bin/env bash
# Builds the XDP program (ebpf/pktcrypt-xdp) from source and prints the object's path.
# Installs what it needs, idempotently: the nightly toolchain's rust-src, and bpf-linker built
# against the nightly's own LLVM (Debian's LLVM 14 is too old; bpf-linker's default features want
# LLVM 23). See shared/toolchain.md.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '\033[1m[build-ebpf]\033[0m %s\n' "$*" >&2; }

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal >&2
rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src' \
  || rustup component add rust-src --toolchain nightly >&2

# bpf-linker keeps an rpath to this directory, so it must outlive the build.
LLVM_PREFIX="${PKTCRYPT_LLVM_PREFIX:-$HOME/.local/share/pktcrypt-llvm}"
NIGHTLY_LIB="$(rustc +nightly --print sysroot)/lib"
mkdir -p "$LLVM_PREFIX/lib"
LIBLLVM=$(ls "$NIGHTLY_LIB"/libLLVM.so.*-rust-* 2>/dev/null | head -1)
[ -n "$LIBLLVM" ] || { echo "no libLLVM in the nightly toolchain ($NIGHTLY_LIB)" >&2; exit 1; }
ln -sf "$LIBLLVM" "$LLVM_PREFIX/lib/libLLVM.so"
ln -sf "$LIBLLVM" "$LLVM_PREFIX/lib/$(basename "$LIBLLVM")"   # the soname bpf-linker loads
if ! LD_LIBRARY_PATH="$NIGHTLY_LIB" bpf-linker --version >/dev/null 2>&1; then
  log "cargo install bpf-linker (against $LIBLLVM; several minutes)"
  LLVM_PREFIX="$LLVM_PREFIX" cargo install bpf-linker --no-default-features --features llvm-22 --locked --quiet >&2
fi

log "cargo +nightly build (bpfel-unknown-none)"
(cd ebpf/pktcrypt-xdp && cargo +nightly build --release --locked --quiet >&2)
echo "$PWD/ebpf/pktcrypt-xdp/target/bpfel-unknown-none/release/pktcrypt-xdp"

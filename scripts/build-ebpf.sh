#!/usr/bin/env bash
# Builds the XDP program (ebpf/pktcrypt-xdp) from source.
#   scripts/build-ebpf.sh           builds it and prints the object's path
#   scripts/build-ebpf.sh --check   builds it and fails unless it is byte for byte the checked-in
#                                   object that the binary embeds ($CHECKED_IN below; CI runs this)
#   scripts/build-ebpf.sh --update  builds it and copies it over the checked-in object
# Installs what it needs, idempotently: the pinned nightly toolchain with rust-src, and the pinned
# bpf-linker built against that nightly's own LLVM (Debian's LLVM 14 is too old; bpf-linker's
# default features want LLVM 23). See shared/toolchain.md.
#
# The build is reproducible: the same bytes in any directory, for any user (the object has no
# debug information or BTF, so no path enters it; checked by building in two directories). What
# it depends on is pinned here: the nightly (its rustc, LLVM and core source), bpf-linker, and
# ebpf/pktcrypt-xdp/Cargo.lock. Changing either pin changes the object: rebuild it with --update
# and commit both.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '\033[1m[build-ebpf]\033[0m %s\n' "$*" >&2; }

MODE=print
case "${1:-}" in
  "") ;;
  --check) MODE=check ;;
  --update) MODE=update ;;
  *) echo "usage: $0 [--check|--update]" >&2; exit 2 ;;
esac
CHECKED_IN=userspace/pktcrypt-io/xdp/pktcrypt-xdp.o

# rustc 1.97.0-nightly (e50aa6fba 2026-05-19), LLVM 22.1.4. A toolchain installed as plain
# `nightly` that is this very build is used as it is (no second download).
NIGHTLY=nightly-2026-05-20
NIGHTLY_COMMIT=e50aa6fba4e63ab34c72bf9acfd2c307c1155d1a
BPF_LINKER_VERSION=0.13.0

# Each output is read whole before grep looks at it: `grep -q` exits at its first match, and
# under pipefail the writer it leaves behind (SIGPIPE) would fail the pipeline now and then.
if grep -qx "commit-hash: $NIGHTLY_COMMIT" <<<"$(rustc +nightly -vV 2>/dev/null || true)"; then
  TOOLCHAIN=nightly
else
  TOOLCHAIN=$NIGHTLY
  grep -q "^$NIGHTLY" <<<"$(rustup toolchain list)" || {
    log "rustup toolchain install $NIGHTLY"
    rustup toolchain install "$NIGHTLY" --profile minimal >&2
  }
  grep -qx "commit-hash: $NIGHTLY_COMMIT" <<<"$(rustc "+$TOOLCHAIN" -vV)" \
    || { echo "$NIGHTLY is not rustc $NIGHTLY_COMMIT" >&2; exit 1; }
fi
grep -q '^rust-src' <<<"$(rustup component list --toolchain "$TOOLCHAIN" --installed 2>/dev/null)" \
  || rustup component add rust-src --toolchain "$TOOLCHAIN" >&2

# bpf-linker keeps an rpath to this directory, so it must outlive the build.
LLVM_PREFIX="${PKTCRYPT_LLVM_PREFIX:-$HOME/.local/share/pktcrypt-llvm}"
NIGHTLY_LIB="$(rustc "+$TOOLCHAIN" --print sysroot)/lib"
mkdir -p "$LLVM_PREFIX/lib"
LIBLLVM=$(ls "$NIGHTLY_LIB"/libLLVM.so.*-rust-* 2>/dev/null | head -1)
[ -n "$LIBLLVM" ] || { echo "no libLLVM in the nightly toolchain ($NIGHTLY_LIB)" >&2; exit 1; }
ln -sf "$LIBLLVM" "$LLVM_PREFIX/lib/libLLVM.so"
ln -sf "$LIBLLVM" "$LLVM_PREFIX/lib/$(basename "$LIBLLVM")"   # the soname bpf-linker loads
if ! grep -qx "bpf-linker $BPF_LINKER_VERSION" <<<"$(LD_LIBRARY_PATH="$NIGHTLY_LIB" bpf-linker --version 2>/dev/null)"; then
  log "cargo install bpf-linker $BPF_LINKER_VERSION (against $LIBLLVM; several minutes)"
  LLVM_PREFIX="$LLVM_PREFIX" cargo install bpf-linker --version "=$BPF_LINKER_VERSION" \
    --no-default-features --features llvm-22 --locked --force --quiet >&2
fi

log "cargo +$TOOLCHAIN build (bpfel-unknown-none)"
(cd ebpf/pktcrypt-xdp && cargo "+$TOOLCHAIN" build --release --locked --quiet >&2)
BUILT="$PWD/ebpf/pktcrypt-xdp/target/bpfel-unknown-none/release/pktcrypt-xdp"
case $MODE in
  print) echo "$BUILT" ;;
  update)
    cp "$BUILT" "$CHECKED_IN"
    log "$CHECKED_IN updated: $(sha256sum "$CHECKED_IN" | cut -d' ' -f1)" ;;
  check)
    if ! cmp -s "$BUILT" "$CHECKED_IN"; then
      echo "$CHECKED_IN is stale: the XDP program built from ebpf/pktcrypt-xdp differs from it" >&2
      echo "  built:      $(sha256sum "$BUILT" | cut -d' ' -f1) $BUILT" >&2
      echo "  checked in: $(sha256sum "$CHECKED_IN" | cut -d' ' -f1)" >&2
      echo "  update it with scripts/build-ebpf.sh --update and commit it" >&2
      exit 1
    fi
    log "$CHECKED_IN is the object built from source ($(sha256sum "$BUILT" | cut -d' ' -f1))" ;;
esac

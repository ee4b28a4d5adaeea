#!/usr/bin/env bash
# `make -C ffi install` as a user of the library sees it: installs into a temporary prefix (under
# target/), checks the layout (versioned SONAME and its links, header, pkg-config file), builds
# the echo examples from a copy outside the repository with nothing but what pkg-config says,
# and runs them against the installed library. Then a staged install (DESTDIR, PREFIX=/usr, a
# multiarch LIBDIR) and its uninstall. Run by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
T=$ROOT/target/ffi-install
rm -rf "$T"
mkdir -p "$T/src"
fail() { echo "ffi install: $*" >&2; exit 1; }

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
PREFIX=$T/prefix
make -s -C ffi install PREFIX="$PREFIX" >/dev/null
L=$PREFIX/lib
[ -f "$L/libpktcrypt.so.$VERSION" ] || fail "no $L/libpktcrypt.so.$VERSION"
[ "$(readlink "$L/libpktcrypt.so.0")" = "libpktcrypt.so.$VERSION" ] || fail "libpktcrypt.so.0 is not a link to libpktcrypt.so.$VERSION"
[ "$(readlink "$L/libpktcrypt.so")" = "libpktcrypt.so.0" ] || fail "libpktcrypt.so is not a link to libpktcrypt.so.0"
grep -q 'SONAME.*\[libpktcrypt\.so\.0\]' <<<"$(readelf -d "$L/libpktcrypt.so.$VERSION")" || fail "SONAME is not libpktcrypt.so.0"
[ -f "$L/libpktcrypt.a" ] && [ -f "$PREFIX/include/pktcrypt.h" ] && [ -f "$L/pkgconfig/pktcrypt.pc" ] \
  || fail "missing the static library, the header or pktcrypt.pc"

# Only the installed pktcrypt.pc: no other search path.
export PKG_CONFIG_LIBDIR=$L/pkgconfig PKG_CONFIG_PATH=
[ "$(pkg-config --modversion pktcrypt)" = "$VERSION" ] || fail "pkg-config --modversion"
cp ffi/examples/echo_server.c ffi/examples/echo_client.c "$T/src/"
for ex in echo_server echo_client; do
  # shellcheck disable=SC2046 # pkg-config's output is meant to be split into words
  cc -O2 -Wall -Wextra -Werror -std=c11 -D_DEFAULT_SOURCE $(pkg-config --cflags pktcrypt) \
    -o "$T/$ex" "$T/src/$ex.c" $(pkg-config --libs pktcrypt)
  grep -q 'NEEDED.*\[libpktcrypt\.so\.0\]' <<<"$(readelf -d "$T/$ex")" || fail "$ex does not need libpktcrypt.so.0"
done
export LD_LIBRARY_PATH
LD_LIBRARY_PATH=$(pkg-config --variable=libdir pktcrypt)
key=$(cargo run -q --locked -p pktcrypt -- keygen)
port=$((40000 + $$ % 5000))
"$T/echo_server" "$port" "$key" 3 & srv=$!
sleep 0.5
"$T/echo_client" "$port" "$key" 50 || { kill "$srv" 2>/dev/null; fail "the echo example against the installed library"; }
wait "$srv" || fail "echo_server"
unset LD_LIBRARY_PATH PKG_CONFIG_LIBDIR PKG_CONFIG_PATH

# A staged install for a package: DESTDIR, the final PREFIX and LIBDIR in pktcrypt.pc; then
# uninstall removes every file it installed.
STAGE=$T/stage
MULTIARCH=/usr/lib/x86_64-linux-gnu
make -s -C ffi install DESTDIR="$STAGE" PREFIX=/usr LIBDIR=$MULTIARCH >/dev/null
for f in "$MULTIARCH/libpktcrypt.so.$VERSION" "$MULTIARCH/libpktcrypt.so.0" "$MULTIARCH/libpktcrypt.so" \
    "$MULTIARCH/libpktcrypt.a" "$MULTIARCH/pkgconfig/pktcrypt.pc" /usr/include/pktcrypt.h; do
  [ -e "$STAGE$f" ] || fail "staged install: no $f"
done
grep -qx "libdir=$MULTIARCH" "$STAGE$MULTIARCH/pkgconfig/pktcrypt.pc" || fail "staged pktcrypt.pc: libdir"
grep -qx "includedir=/usr/include" "$STAGE$MULTIARCH/pkgconfig/pktcrypt.pc" || fail "staged pktcrypt.pc: includedir"
make -s -C ffi uninstall DESTDIR="$STAGE" PREFIX=/usr LIBDIR=$MULTIARCH >/dev/null
[ -z "$(find "$STAGE" -type f -o -type l)" ] || fail "uninstall left: $(find "$STAGE" -type f -o -type l)"
rm -rf "$T"
echo "ffi install: libpktcrypt.so.$VERSION (SONAME libpktcrypt.so.0), header and pktcrypt.pc installed; the echo example built through pkg-config alone ran against it; staged install and uninstall ok"

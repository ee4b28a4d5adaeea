#!/usr/bin/env bash
# The test command: sets up a fresh machine (scripts/setup.sh), then runs every check CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "pktcrypt-core's module graph has no cycle"
python3 scripts/module_graph.py

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "benchmark-only build (feature insecure-null-backend): clippy and its unit tests; the key exchange without aws-lc"
cargo clippy -p pktcrypt --features insecure-null-backend --all-targets --locked -- -D warnings
# pktcrypt-core alone, without its feature aws-lc: the key server's side of the key exchange on
# RustCrypto, as the C ABI and Python builds have it (the workspace run below has aws-lc).
cargo test -p pktcrypt-core --features insecure-null-backend --lib --locked -- null_tests kex::

step "cargo doc (public API docs, warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

step "XDP program rebuilt from source: byte for byte the checked-in object that the binary embeds"
# The build is reproducible (pinned nightly and bpf-linker; no paths in the object), so every XDP
# test below (cargo test, the xdp fuzz target, the demo) runs the embedded object, and that is
# the program built from this source.
unset PKTCRYPT_XDP_OBJECT
./scripts/build-ebpf.sh --check
cargo fmt --manifest-path ebpf/pktcrypt-xdp/Cargo.toml -- --check

step "cargo test (unit, known-answer, property, independence, demo, loopback, XDP on veth, gateways end to end)"
export PKTCRYPT_PYTHON="$PWD/.venv/bin/python"
cargo test --workspace --locked 2>&1 | tee target/cargo-test.log
# The workspace build unifies features: the daemon and the benches turn on pktcrypt-core's aws-lc,
# so the run above is the aws-lc one (kex::aws_lc_tests; the simulations' key server too).
# pktcrypt-core's aws-lc-only tests must have run.
aws_lc_passed=$(grep -Ec '^test kex::aws_lc_tests::[a-z0-9_]+ \.\.\. ok$' target/cargo-test.log || true)
[ "$aws_lc_passed" -ge 4 ] \
  || { echo "the aws-lc key-exchange tests did not run (is pktcrypt-core's feature aws-lc still on in the workspace?)"; exit 1; }
# And the default AEAD backend of those builds, ring+aws-lc, was the one tested.
grep -Eq '^test aead::tests::ring_aws_lc_expands_its_second_key_at_the_second_long_packet \.\.\. ok$' target/cargo-test.log \
  || { echo "the ring+aws-lc AEAD tests did not run (pktcrypt-core's features ring and aws-lc-aead)"; exit 1; }
rust_passed=$(grep -Eo 'test result: ok\. [0-9]+ passed' target/cargo-test.log | awk '{s+=$4} END {print s+0}')

step "C ABI: header up to date, C tests and examples (native, then valgrind)"
cbindgen --config ffi/cbindgen.toml --crate pktcrypt-ffi --output target/pktcrypt.h.fresh
diff -u ffi/include/pktcrypt.h target/pktcrypt.h.fresh \
  || { echo "ffi/include/pktcrypt.h is stale: regenerate it with cbindgen (see ffi/cbindgen.toml)"; exit 1; }
make -C ffi test
make -C ffi test VALGRIND=1

step "C library installed: make install (release) into a prefix under target/, an example built and run against it through pkg-config alone; a DESTDIR install and uninstall"
./ffi/tests/install.sh
c_passed=$(( $(ls ffi/tests/test_*.c | wc -l) + 1 ))

step "Python: abi3 wheel built in a fresh virtual environment, installed, pytest, mypy"
cargo fmt --manifest-path python/Cargo.toml -- --check
cargo clippy --manifest-path python/Cargo.toml --locked -- -D warnings
rm -rf target/pyvenv target/wheels target/sdist
python3 -m venv target/pyvenv
target/pyvenv/bin/pip install --quiet --disable-pip-version-check maturin pytest mypy cryptography
(cd python && ../target/pyvenv/bin/maturin build --release --locked --quiet --out ../target/wheels)
# One wheel for every CPython from 3.11 on (pyo3's abi3-py311): its name and its module say so.
wheel=$(ls target/wheels/pktcrypt-*.whl)
target/pyvenv/bin/python - "$wheel" <<'PY'
import sys, zipfile
path = sys.argv[1]
names = zipfile.ZipFile(path).namelist()
assert "-cp311-abi3-" in path.rsplit("/", 1)[-1], f"not a cp311-abi3 wheel: {path}"
assert "pktcrypt/_native.abi3.so" in names, f"no abi3 extension module in {names}"
assert any(n.endswith("LICENSE-MIT") for n in names) and any(n.endswith("LICENSE-APACHE") for n in names), "licence files"
print("abi3 wheel:", path.rsplit("/", 1)[-1])
PY
target/pyvenv/bin/pip install --quiet --disable-pip-version-check "$wheel"
(cd python && ../target/pyvenv/bin/python -m pytest -q tests | tee ../target/pytest.log && ../target/pyvenv/bin/mypy)
py_passed=$(grep -Eo '[0-9]+ passed' target/pytest.log | tail -1 | awk '{print $1}')

step "Python: sdist; pip install ./python and pip install of the sdist, each in a fresh virtual environment"
(cd python && ../target/pyvenv/bin/maturin sdist --out ../target/sdist 2>/dev/null)
sdist=$(ls target/sdist/pktcrypt-*.tar.gz)
# Both build through maturin's PEP 517 backend (Cargo.lock, locked: pyproject.toml). The sdist's
# build shares python/target: the crates.io crates are not compiled again, pktcrypt's own crates
# (from the sdist's copy) are.
for src in ./python "$sdist"; do
  rm -rf target/pyvenv-install
  python3 -m venv target/pyvenv-install
  CARGO_TARGET_DIR=$PWD/python/target target/pyvenv-install/bin/pip install --quiet --no-cache-dir \
    --disable-pip-version-check "$src" pytest
  (cd python && ../target/pyvenv-install/bin/python -m pytest -q -p no:cacheprovider tests/test_roundtrip.py tests/test_errors.py) \
    || { echo "pip install $src: the tests fail"; exit 1; }
  echo "pip install $src: ok"
done
rm -rf target/pyvenv-install

step "benchmarks compile"
cargo bench -p pktcrypt-benches --locked --no-run

step "fuzz smoke run (${FUZZ_SECONDS:=20}s per target)"
# crate:target. pktcrypt-io's xdp runs the XDP program built above through BPF_PROG_TEST_RUN
# (root, PKTCRYPT_XDP_OBJECT): here it must not skip.
for entry in pktcrypt-core:packet_parser pktcrypt-core:open pktcrypt-core:control \
    pktcrypt-io:gateway pktcrypt-io:xdp; do
  crate=${entry%%:*} target=${entry#*:}
  (cd "userspace/$crate" && cargo +nightly fuzz run "$target" -- \
      -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 >/dev/null 2>"../../target/fuzz-$target.log") \
    || { tail -40 "target/fuzz-$target.log"; echo "fuzz target $target failed"; exit 1; }
  if grep -q SKIPPING "target/fuzz-$target.log"; then
    grep SKIPPING "target/fuzz-$target.log"; echo "fuzz target $target skipped"; exit 1
  fi
  echo "fuzz $target: $(grep -Eo 'Done [0-9]+ runs' "target/fuzz-$target.log" | tail -1)"
done

step "the README's main job: scripts/demo.sh (gateways in namespaces, must exit 0)"
./scripts/demo.sh > target/demo.log 2>&1 || { tail -40 target/demo.log; echo "demo failed"; exit 1; }
grep -E "on the wire:|packet loss|key generations|stopped gateways drop|no XDP program left" target/demo.log

step "cargo install on stable: the installed binary passes the XDP test with its embedded object"
# The same release build as the demo's (same target directory), so nothing is compiled again; the
# XDP test is the binary the cargo test run above built (cargo-test.log names it).
rm -rf target/pkinst
cargo install --path userspace/pktcrypt --locked --root target/pkinst --target-dir target --quiet
xdp_test=$(sed -n 's|^ *Running tests/xdp\.rs (\(.*\))$|\1|p' target/cargo-test.log | head -1)
[ -n "$xdp_test" ] && [ -x "$xdp_test" ] || { echo "no XDP test binary named in target/cargo-test.log"; exit 1; }
PKTCRYPT_BIN=$PWD/target/pkinst/bin/pktcrypt "$xdp_test" --nocapture \
  > target/xdp-installed.log 2>&1 || { tail -40 target/xdp-installed.log; echo "XDP test with the installed binary failed"; exit 1; }
grep -q "^binary $PWD/target/pkinst/bin/pktcrypt, XDP object embedded$" target/xdp-installed.log \
  && grep -q "^test result: ok. 1 passed" target/xdp-installed.log \
  || { cat target/xdp-installed.log; echo "the XDP test did not run the installed binary with the embedded object"; exit 1; }
grep -E "^binary|^test result" target/xdp-installed.log

echo
echo "all checks passed: Rust $rust_passed, C $c_passed (native and valgrind), Python $py_passed"
echo "summary: $((rust_passed + c_passed + py_passed)) passed, 0 failed"

#!/usr/bin/env bash
# The main job: sets up a fresh machine, builds, and runs the demonstration.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo run --release --locked -p pktcrypt -- demo "$@"

#!/usr/bin/env bash
# Benchmarks: throughputs and ratios on this machine (see `kagi bench --help`).
#   SCP03 host crypto, simulator APDUs, SCP03 vs plain round trips (in process), then APDU
#   round trips through a private pcscd + vpcd (scripts/pcsc-sandbox.sh).
# Extra arguments (e.g. --seconds 2, --json) go to the in-process run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --quiet --release -p kagi
./target/release/kagi bench "$@"
bash scripts/pcsc-sandbox.sh --preset jpki-demo -- ./target/release/kagi bench --reader "Virtual PCD 00 00" --count 2000

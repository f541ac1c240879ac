#!/usr/bin/env bash
# Benchmarks: throughputs and ratios on this machine (see `kagi bench --help`).
# Pass --seconds N for longer runs, --json for machine-readable figures.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --quiet --release -p kagi
exec ./target/release/kagi bench "$@"

#!/usr/bin/env bash
# The main job on the embedded default: open an SCP03 session (level 33, pseudo-random card
# challenge checked) to a simulated GlobalPlatform card, list what it reports, and print the
# APDU trace (keys never appear in it). Extra arguments go to `kagi gp list`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --quiet --release -p kagi
./target/release/kagi gp info --sim
echo
exec ./target/release/kagi gp list --sim --trace "$@"

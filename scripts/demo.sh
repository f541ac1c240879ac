#!/usr/bin/env bash
# The main job on the embedded default: personalise a small batch of simulated cards, then open
# an SCP03 session (level 33, pseudo-random card challenge checked) to a simulated GlobalPlatform
# card, list what it reports, and print the APDU trace (keys never appear in it). Extra
# arguments go to `kagi gp list`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# KAGI_BIN_DIR: use the kagi binary there instead of building (the README test does).
if [ -n "${KAGI_BIN_DIR:-}" ]; then K="$KAGI_BIN_DIR/kagi"; else
    cargo build --quiet --release -p kagi-cli
    K=./target/release/kagi
fi
# A personalisation batch: the example member profile (operator security domain, member
# applet, member data, per-card production keys) on 4 simulated stations, journalled and
# verified card by card; two bad example records are reported and skipped.
batch=$(mktemp -d)
trap 'rm -rf "$batch"' EXIT
cp -r examples/keys "$batch/keys" && chmod 600 "$batch"/keys/*.keys   # git does not keep 0600
# Exit code 3 = done with failures (here: the two bad records); anything else non-zero fails.
rc=0
"$K" perso run --profile examples/perso-member.toml \
    --input examples/member-records.csv --sim 4 --out "$batch/out" --insecure-file-keys "$batch/keys" || rc=$?
[ "$rc" -eq 0 ] || [ "$rc" -eq 3 ] || exit "$rc"
echo
"$K" gp info --sim
echo
"$K" gp list --sim --trace "$@"

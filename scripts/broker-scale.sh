#!/usr/bin/env bash
# The credential broker at scale on this machine (bounded: about four minutes on 2 cores for
# the default million credentials): synthetic cards × services credentials sealed under a
# KEK in a private SoftHSM2 token, then `kagi broker scale` reports lookup+unwrap+use
# latency (p50/p99), card logins per second over HTTP, database size per million
# credentials and KEK rotation time per million.
# Usage: scripts/broker-scale.sh [CARDS [SERVICES]] [-- extra kagi broker scale options,
#        e.g. --database postgres://… --database postgres://… for two shards]
set -euo pipefail
cd "$(dirname "$0")/.."
cards=${1:-100000}
services=${2:-10}
shift $(( $# > 2 ? 2 : $# )) || true
[ "${1:-}" = "--" ] && shift
bash scripts/setup.sh
# KAGI_BIN_DIR: use the kagi binary there instead of building (the README test does).
if [ -n "${KAGI_BIN_DIR:-}" ]; then K="$KAGI_BIN_DIR/kagi"; else
    cargo build --quiet --release -p kagi-cli
    K=./target/release/kagi
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
eval "$(bash scripts/softhsm-init.sh "$work/hsm")"
"$K" broker scale --dir "$work/run" --cards "$cards" --services "$services" \
    --hsm-module /usr/lib/softhsm/libsofthsm2.so --hsm-pin-file "$work/hsm/user.pin" "$@"

#!/usr/bin/env bash
# A feeder for `kagi perso run --readers ... --feeder-cmd` inside
# `scripts/pcsc-sandbox.sh --hopper`: swaps the simulated card in $KAGI_READER for the next
# factory-fresh one (readers "Virtual PCD 00 0S" hold card S, "Virtual PCD X 00 0S" card
# 2*(X-'A')+S; see scripts/private-pcscd.sh).
set -eu
r="${KAGI_READER:?}"
s="${r: -1}"
case "$r" in
    "Virtual PCD 00 0"?) e=0 ;;
    "Virtual PCD "?" 00 0"?) l="${r:12:1}"; e=$(( $(printf %d "'$l") - 65 )) ;;
    *) echo "not a sandbox reader: $r" >&2; exit 1 ;;
esac
echo "next $((e * 2 + s))" >"${KAGI_SANDBOX:?}/sim-ctl"

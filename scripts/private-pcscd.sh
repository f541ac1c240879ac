#!/usr/bin/env bash
# Runs INSIDE fresh mount and network namespaces (started by `unshare -m -n`): brings up a
# private pcscd whose socket lands in $RUN (bind-mounted over /run/pcscd, on a tmpfs /run),
# with the vpcd reader configuration in $CONF, and `$KAGI sim serve` inserting $CARDS
# simulated cards. Stays up until its standard input closes, then stops exactly the two
# processes it started. Used by scripts/pcsc-sandbox.sh and the Rust integration tests.
# Environment: WORK, CONF, RUN, KAGI, CARDS.
set -eu
ip link set lo up
mount -t tmpfs tmpfs /run
mkdir -p /run/pcscd
mount --bind "$RUN" /run/pcscd
pcscd --foreground --apdu -c "$CONF" >"$WORK/pcscd.log" 2>&1 &
P=$!
"$KAGI" sim serve --vpcd 127.0.0.1:35963 --cards "$CARDS" --seed 7 >"$WORK/sim.log" 2>&1 &
S=$!
echo "$P $S" >"$WORK/pids"
trap 'kill $S 2>/dev/null; kill -TERM $P 2>/dev/null; wait' EXIT
read -r _ || true

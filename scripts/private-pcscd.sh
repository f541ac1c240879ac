#!/usr/bin/env bash
# Runs INSIDE fresh mount and network namespaces (started by `unshare -m -n`): brings up a
# private pcscd whose socket lands in $RUN (bind-mounted over /run/pcscd, on a tmpfs /run),
# with vpcd readers for $CARDS simulated cards (one reader.conf entry per two slots; extra
# entries load their own copy of the driver, as vpcd keeps per-slot state in globals), and
# `$KAGI sim serve` inserting the cards. Stays up until its standard input closes (or gives
# an empty line), then stops exactly the two processes it started. A `restart-pcscd` line on
# standard input stops pcscd and starts it again (every reader goes away and comes back, as
# when readers are unplugged or pcscd restarts). Used by scripts/pcsc-sandbox.sh and the Rust
# integration tests. Environment: WORK, RUN, KAGI, CARDS, PRESET (default gp-test), IMAGE (card
# images, as `kagi sim serve --sim-image`), HOPPER
# (non-empty: every slot is fed factory-fresh cards with their own serials; `next I` swaps),
# INSTALL (a CAP file installed into each new card, as `kagi sim serve --install`), TEAR (cut
# each card's power at its Nth persistent write, as `kagi sim serve --sim-tear-at`).
# Readers: "Virtual PCD 00 00", "Virtual PCD 00 01", then "Virtual PCD B 00 00", … (card i is
# on TCP port 35963 + i).
set -eu
DRIVER=/usr/lib/pcsc/drivers/serial/libifdvpcd.so
CONF="$WORK/reader.conf.d"
mkdir -p "$CONF" "$WORK/drv"
entries=$(( (CARDS + 1) / 2 ))
for ((e = 0; e < entries; e++)); do
    if [ "$e" -eq 0 ]; then name="Virtual PCD"; lib="$DRIVER"
    else
        letter=$(printf "\\$(printf %03o $((65 + e)))")
        name="Virtual PCD $letter"; lib="$WORK/drv/libifdvpcd-$e.so"
        cp "$(readlink -f "$DRIVER")" "$lib"
    fi
    printf 'FRIENDLYNAME "%s"\nDEVICENAME   /dev/null:0x%X\nLIBPATH      %s\nCHANNELID    0x%X\n' \
        "$name" $((0x8C7B + 2 * e)) "$lib" $((0x8C7B + 2 * e)) >"$CONF/vpcd-$e"
done
ip link set lo up
mount -t tmpfs tmpfs /run
mkdir -p /run/pcscd
mount --bind "$RUN" /run/pcscd
start_pcscd() {
    pcscd --foreground --apdu -c "$CONF" >>"$WORK/pcscd.log" 2>&1 &
    P=$!
}
start_pcscd
# Write `remove I` / `insert I` lines to $WORK/sim-ctl to take card I out and put it back,
# `next I` to swap in the next card (with HOPPER).
mkfifo "$WORK/sim-ctl"
exec 8<>"$WORK/sim-ctl"
"$KAGI" sim serve --vpcd 127.0.0.1:35963 --cards "$CARDS" --sim-seed 7 --sim-preset "${PRESET:-gp-test}" ${IMAGE:+--sim-image "$IMAGE"} ${HOPPER:+--hopper} ${INSTALL:+--install "$INSTALL"} ${TEAR:+--sim-tear-at "$TEAR"} --control <&8 >"$WORK/sim.log" 2>&1 &
S=$!
echo "$P $S" >"$WORK/pids"
# pcscd may not finish a graceful stop while a vpcd reader still waits for its simulator (the
# simulator failed to start): after 5 s it is killed, so no private pcscd outlives its sandbox.
# (Each step may fail — the simulator may be gone already — and must not end the trap under
# `set -e`: that is how a sandbox whose simulator failed used to leave its pcscd running.)
stop_all() {
    kill "$S" 2>/dev/null || true
    kill -TERM "$P" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$P" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$P" 2>/dev/null || true
    wait || true
}
trap stop_all EXIT
while read -r cmd; do
    case "$cmd" in
        restart-pcscd)
            kill -TERM "$P" 2>/dev/null || true
            wait "$P" 2>/dev/null || true
            start_pcscd
            echo "$P $S" >"$WORK/pids"
            ;;
        *) break ;;
    esac
done

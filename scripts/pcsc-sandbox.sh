#!/usr/bin/env bash
# Runs a command against a private PC/SC stack: its own pcscd (isolated with unshare, never
# touching a pcscd already running) with vpcd readers holding N simulated cards.
#   scripts/pcsc-sandbox.sh [--cards N] [--preset NAME] [--install FILE.cap] [--hopper] -- COMMAND [ARGS...]
# (--install: the CAP file's applet loaded and installed into every card, as `kagi sim serve --install`)
# COMMAND sees PCSCLITE_CSOCK_NAME pointing at the private daemon, and KAGI_SANDBOX (write
# `next I` to $KAGI_SANDBOX/sim-ctl to swap card I, with --hopper), e.g.
#   scripts/pcsc-sandbox.sh -- opensc-tool -l
#   scripts/pcsc-sandbox.sh -- ./target/release/kagi gp list --reader 0 --test-keys
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
# The reader that holds card i (see scripts/private-pcscd.sh).
reader_name() {
    local e=$(($1 / 2)) s=$(($1 % 2))
    if [ "$e" -eq 0 ]; then echo "Virtual PCD 00 0$s"
    else echo "Virtual PCD $(printf "\\$(printf %03o $((65 + e)))") 00 0$s"; fi
}
cards=1
while [ $# -gt 0 ]; do
    case "$1" in
        --cards) cards="$2"; shift 2 ;;
        --preset) export PRESET="$2"; shift 2 ;;
        --install) INSTALL="$(realpath "$2")"; export INSTALL; shift 2 ;;
        --hopper) export HOPPER=1; shift ;;
        --) shift; break ;;
        *) break ;;
    esac
done
[ $# -gt 0 ] || { echo "usage: $0 [--cards N] -- COMMAND [ARGS...]" >&2; exit 2; }
KAGI="${KAGI:-${KAGI_BIN_DIR:-$root/target/release}/kagi}"
[ -x "$KAGI" ] || cargo build --quiet --release -p kagi-cli --manifest-path "$root/Cargo.toml"

WORK=$(mktemp -d /tmp/kagi-sandbox.XXXXXX)
RUN="$WORK/run"; mkdir -p "$RUN"
mkfifo "$WORK/ctl"
WORK="$WORK" RUN="$RUN" KAGI="$KAGI" CARDS="$cards" \
    unshare -m -n -- bash "$root/scripts/private-pcscd.sh" <"$WORK/ctl" &
NS=$!
exec 9>"$WORK/ctl"
cleanup() { exec 9>&-; wait "$NS" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
export PCSCLITE_CSOCK_NAME="$RUN/pcscd.comm" KAGI_SANDBOX="$WORK"
for _ in $(seq 400); do [ -S "$PCSCLITE_CSOCK_NAME" ] && break; sleep 0.025; done
for ((i = 0; i < cards; i++)); do
    "$KAGI" readers --wait "$(reader_name "$i")" --timeout-ms 15000 >/dev/null
done
"$@"

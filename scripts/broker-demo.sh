#!/usr/bin/env bash
# The credential broker on the embedded default, in well under a minute: a broker up on
# SQLite with its key-encryption key in a private SoftHSM2 token; the example service
# registered; a simulated JPKI card enrolled (its authentication certificate only — nothing
# is written to the card); the holder logs in with the card (PIN) and the example service
# accepts the broker's assertion; a second service in back-channel mode gets only a one-time
# code through the holder's client and redeems it at the broker itself; the card is revoked
# at the broker and the next login is refused. Exits non-zero on any failure. Stops only the processes it started.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# KAGI_BIN_DIR: use the binaries there instead of building (the README test does).
bin="${KAGI_BIN_DIR:-$PWD/target/release}"
[ -n "${KAGI_BIN_DIR:-}" ] || cargo build --release -q -p kagi-cli -p kagi-example-service
K="$bin/kagi"
SERVICE="$bin/kagi-example-service"
work=$(mktemp -d)
pids=()
cleanup() {
    # Each process stops gracefully on SIGTERM (exit 0); the demo's own status stands.
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null && { wait "$p" 2>/dev/null || true; }; done
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    return 1
}
port=$(free_port)
sport=$(free_port)
url="http://127.0.0.1:$port"
start=$(date +%s.%N)

echo "== test CA, broker configuration, a KEK generated inside a private SoftHSM2 token"
"$K" ca init --dir "$work/pki" >/dev/null
"$K" broker init --dir "$work/broker" --listen "127.0.0.1:$port" --ca-dir "$work/pki" --hsm-keks >/dev/null
eval "$(bash scripts/softhsm-init.sh "$work/hsm")"
HSM=(--hsm-module /usr/lib/softhsm/libsofthsm2.so --hsm-token kagi --hsm-pin-file "$work/hsm/user.pin")
"$K" broker new-kek --id k1 "${HSM[@]}"

echo "== broker up (SQLite $work/broker/broker.db, KEKs in the HSM)"
"$K" broker serve --config "$work/broker/broker.toml" "${HSM[@]}" 2>"$work/broker.log" &
pids+=($!)
wait_port "$port"

echo "== the example service registered (it accepts assertions of card logins)"
A=("$K" broker admin --config "$work/broker/admin.toml")
"${A[@]}" register-service --id svc-example --method assertion --min-assurance card
"$SERVICE" --broker "$url" --service svc-example --listen "127.0.0.1:$sport" 2>"$work/service.log" &
pids+=($!)
wait_port "$sport"

echo "== a simulated JPKI card (issued by the test CA), enrolled by its certificate"
CARD=(--sim --sim-preset jpki-demo --sim-ca-dir "$work/pki" --sim-image "$work/card.img")
"$K" jpki read-cert "${CARD[@]}" --cert auth -o "$work/auth.der" 2>/dev/null
card=$("${A[@]}" --json enrol-card --cert "$work/auth.der" --holder holder-1 | sed -n 's/.*"card": *"\([^"]*\)".*/\1/p')
"${A[@]}" enrol --card "$card" --service svc-example
echo "   card $card"

echo "== the holder logs in with the card; the service accepts the broker's assertion"
echo 1234 >"$work/pin.txt"
"$K" broker login --broker "$url" --service svc-example --service-url "http://127.0.0.1:$sport" \
    --consent "${CARD[@]}" --pin-file "$work/pin.txt"

echo "== back channel: a second service takes only a one-time code and redeems it itself"
cport=$(free_port)
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/svc-code.key.pem" 2>/dev/null
openssl pkey -in "$work/svc-code.key.pem" -pubout -out "$work/svc-code.pub.pem"
"${A[@]}" register-service --id svc-code --method assertion --min-assurance card
"${A[@]}" back-channel --service svc-code --mode code --service-key "$work/svc-code.pub.pem" --code-secs 60
"${A[@]}" enrol --card "$card" --service svc-code
"$SERVICE" --broker "$url" --service svc-code --service-key "$work/svc-code.key.pem" \
    --listen "127.0.0.1:$cport" 2>"$work/service-code.log" &
pids+=($!)
wait_port "$cport"
"$K" --json broker login --broker "$url" --service svc-code --service-url "http://127.0.0.1:$cport" \
    --consent "${CARD[@]}" --pin-file "$work/pin.txt" >"$work/code-login.json"
jq -e '.code != null and .assertion == null and .service_answer.welcome != null' "$work/code-login.json" >/dev/null \
    || { cat "$work/code-login.json" >&2; exit 1; }
echo "   the holder's client got only a code; svc-code redeemed it: $(jq -c .service_answer "$work/code-login.json")"

echo "== the card is revoked at the broker; the next login is refused"
"${A[@]}" revoke --card "$card"
if "$K" broker login --broker "$url" --service svc-example --service-url "http://127.0.0.1:$sport" \
    --consent "${CARD[@]}" --pin-file "$work/pin.txt" 2>"$work/refused.txt"; then
    echo "the revoked card logged in" >&2
    exit 1
fi
grep -q 'login.revoked' "$work/refused.txt" || { cat "$work/refused.txt" >&2; exit 1; }
echo "   refused: $(cat "$work/refused.txt")"

echo "== audit trail"
"${A[@]}" audit --card "$card"
# No key material in the broker's log: the KEK never left the HSM; the state key is a file.
state=$(cat "$work/broker/state.key")
if grep -qi "$state" "$work/broker.log"; then echo "the state key is in the log" >&2; exit 1; fi

end=$(date +%s.%N)
echo
printf 'broker demo: %.1f s (after the build)\n' "$(echo "$end - $start" | bc)"

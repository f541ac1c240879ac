#!/usr/bin/env bash
# The over-the-air download on the embedded default, in well under a minute, with the two
# organisations of seed 004 as two processes: the provider's SP-TSM (its security-domain keys,
# SQLite) and the operator's MNO-TSM (the SIMs' issuer-domain keys and registry, its own
# SQLite). The operator registers a simulated SIM that has no provider domain yet (with the
# manufacturer's certificate for the key agreement key the card made); the provider checks
# that certificate and the user's application (signed with a simulated My Number card's
# signature key) and requests a JPKI credential sealed to the SIM's key; the relay carries the
# card scripts over an LTE-like link — the SP-TSM sends it to the MNO-TSM, which creates the
# provider's domain and installs the JPKI applet under the issuer keys (⑭⑮), then takes it
# back, replaces the domain's initial keys with the provider's and writes the credential (⑱);
# the provider checks the receipt (the new key's signature over the TSM's nonce); the holder
# signs with the credential and a PIN-less eligibility read says eligible; then the credential
# is revoked and the next eligibility read says revoked. Prints the download time last and
# exits non-zero on any failure. Stops only the server processes it started.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# KAGI_BIN_DIR: use the kagi binary there instead of building (the README test does).
if [ -n "${KAGI_BIN_DIR:-}" ]; then K="$KAGI_BIN_DIR/kagi"; else
    cargo build --release -q -p kagi-cli
    K="$PWD/target/release/kagi"
fi
work=$(mktemp -d)
tsm_pid=""
mno_pid=""
cleanup() {
    [ -n "$tsm_pid" ] && kill "$tsm_pid" 2>/dev/null && wait "$tsm_pid" 2>/dev/null
    [ -n "$mno_pid" ] && kill "$mno_pid" 2>/dev/null && wait "$mno_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 18750)
url="http://127.0.0.1:$port"
mno_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 18760)
json_field() { sed -n "s/.*\"$2\": *\"\([^\"]*\)\".*/\1/p" "$1" | head -n 1; }

echo "== SP-TSM and MNO-TSM keys and configurations, test CA"
"$K" sp-tsm init --dir "$work/tsm" --listen "127.0.0.1:$port" >/dev/null
"$K" mno-tsm init --dir "$work/mno" --listen "127.0.0.1:$mno_port" \
    --sp-tsm-key "$work/tsm/tsm.pub.pem" >/dev/null
cat "$work/mno/sp-tsm-link.toml" >>"$work/tsm/tsm.toml"   # the SP-TSM names its MNO-TSM
"$K" ca init --dir "$work/pki" >/dev/null
echo "== MNO-TSM up (SQLite $work/mno/mno-tsm.db), SP-TSM up (SQLite $work/tsm/tsm.db)"
"$K" mno-tsm serve --config "$work/mno/mno-tsm.toml" --insecure-file-keys "$work/mno/keys" 2>"$work/mno.log" &
mno_pid=$!
"$K" sp-tsm serve --config "$work/tsm/tsm.toml" --insecure-file-keys "$work/tsm/keys" 2>"$work/tsm.log" &
tsm_pid=$!
for p in "$mno_port" "$port"; do
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break
        sleep 0.1
    done
done

echo "== operator: a SIM without the provider's domain, with a certified card key, registered"
"$K" sim provision --sim-image "$work/sim.img" --serial demo-phone-1 --no-domain \
    --manufacturer-ca "$work/maker" --json >"$work/sim.json"
iccid=$(json_field "$work/sim.json" iccid)
cin=$(json_field "$work/sim.json" cin)
# With its MNO-TSM only: the SP-TSM reads the SIM's record from there.
"$K" tsm mno --config "$work/mno/operator.toml" register-card --iccid "$iccid" --cin "$cin" \
    --card-certificate "$(json_field "$work/sim.json" card_certificate)" >/dev/null
echo "   SIM $iccid (card $cin)"

echo "== user: apply, signed with the My Number card's signature key (a simulated jpki-demo card)"
echo ABC123 >"$work/sign-password.txt"
sp_party=$(sed -n 's/^party = "\(.*\)"/\1/p' "$work/tsm/sp.toml")
"$K" jpki apply --sim --sim-preset jpki-demo --sim-image "$work/mynumber.img" --sim-pki-dir "$work/pki" \
    --iccid "$iccid" --provider "$sp_party" --subscriber-ref demo-user --contact holder@example.jp \
    --pin-file "$work/sign-password.txt" --out "$work/application.bin" 2>/dev/null

echo "== provider: check the application, issue a JPKI user-authentication credential, sealed to the SIM's own key"
echo 2468 >"$work/pin.txt"
echo "demo password" >"$work/password.txt"
"$K" tsm provider --config "$work/tsm/sp.toml" issue --rsa --iccid "$iccid" --ca-dir "$work/pki" \
    --application "$work/application.bin" \
    --manufacturer-ca "$work/maker/manufacturer-ca.crt.pem" \
    --pin-file "$work/pin.txt" --password-file "$work/password.txt" --out "$work/issue.json"
op=$(json_field "$work/issue.json" op)
json_field "$work/issue.json" ticket >"$work/ticket.txt"
json_field "$work/issue.json" access_code >"$work/code.txt"

echo "== relay (the phone app) over an LTE-like link (50 ms round trip): SP-TSM, MNO-TSM, SP-TSM"
"$K" relay --tsm "$url" --ticket-file "$work/ticket.txt" --access-code-file "$work/code.txt" \
    --password-file "$work/password.txt" --sim --sim-image "$work/sim.img" --link lte \
    --capture "$work/relay.bin" --json >"$work/relay.json"
seconds=$(sed -n 's/.*"seconds": *\([0-9.]*\).*/\1/p' "$work/relay.json")
trips=$(sed -n 's/.*"round_trips": *\([0-9]*\).*/\1/p' "$work/relay.json")

echo "== provider: receipt (TSM signature, on-card key proof)"
"$K" tsm provider --config "$work/tsm/sp.toml" receipt --issued "$work/issue.json"
"$K" tsm provider --config "$work/tsm/sp.toml" status --op "$op"

echo "== holder: sign with the credential; PIN-less eligibility read"
echo "kagi demo" >"$work/msg.txt"
"$K" jpki sign --sim --sim-image "$work/sim.img" --pin-file "$work/pin.txt" -i "$work/msg.txt" -o "$work/msg.sig"
"$K" eligibility read --sim --sim-image "$work/sim.img" --ca "$work/pki/auth-ca.crt.pem" | sed -n 1p

echo "== provider: revoke (SIM lost); the next eligibility read says revoked"
"$K" tsm provider --config "$work/tsm/sp.toml" revoke --credential "$op" --reason card-lost >/dev/null
# A verdict other than eligible exits 4 (the CLI's exit-code table).
rc=0
report=$("$K" eligibility read --sim --sim-image "$work/sim.img" --ca "$work/pki/auth-ca.crt.pem" \
    --revoked "$work/tsm/revoked.txt" --json) || rc=$?
verdict=$(printf '%s\n' "$report" | sed -n 's/.*"verdict": *"\([^"]*\)".*/\1/p')
echo "   verdict: $verdict (exit code $rc)"
[ "$verdict" = "revoked" ] && [ "$rc" -eq 4 ] || { echo "expected revoked, exit code 4" >&2; exit 1; }

echo "== audit trails: the SP-TSM's operation, the MNO-TSM's preparation of the SIM"
"$K" tsm audit --database "$work/tsm/tsm.db" --op "$op" | cut -c1-110
"$K" tsm audit --database "$work/mno/mno-tsm.db" | cut -c1-110

echo
echo "download time over the LTE-like link: ${seconds} s in ${trips} round trips (the 2012 trial: about 6 s)"

#!/usr/bin/env bash
# Seed 004's download of the JPKI user-authentication credential to a SIM with its three
# organisations as three processes, each with its own keys, configuration and SQLite database:
# the JPKI issuer (`kagi jpki-issuer`: the signature CA it trusts, the user-authentication CA
# it issues with — a file key store here —, the link phone certificate ↔ signature
# certificate), the provider's SP-TSM (`kagi sp-tsm`: the provider's security-domain keys) and
# the operator's MNO-TSM (`kagi mno-tsm`: the SIMs' issuer-domain keys and registry). The
# operator registers a simulated SIM; the user signs an application with a simulated My
# Number card (②); the provider hands it to the SP-TSM, which asks the issuer (⑯): the issuer
# checks it against the signature CA and its CRL (③), makes the key and certificate (⑦),
# links them to the card's signature serial (⑧), sends the PIN to its PIN mailer and answers
# key and PIN sealed to the SIM (⑰); the SP-TSM mails the access code to the address the user
# signed into the application (⑪: its maildir outbox here, read back as the user would); the
# relay runs the download over an LTE-like link through
# the SP-TSM and the MNO-TSM (⑬⑭⑮⑱); the holder signs with the credential; then the card's
# signature certificate is revoked at the CA, the issuer revokes the linked phone certificate
# and the SP-TSM's next status query marks it revoked: the eligibility read of the issuer's CRL
# says revoked (before that, a suspension at the holder's request and its resumption).
# Key generation: KAGI_KEY_GENERATION=on-card (the default, preferred: the SIM's JPKI applet
# generates the key in the download's first session against the issuer's challenge, the issuer
# checks its proof and certifies it; no private key travels) or =issuer (as the seed draws it:
# the issuer makes the key and seals it to the SIM, ⑦⑯⑰).
# Exits non-zero on any failure; stops only the server processes it started.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# KAGI_BIN_DIR: use the kagi binary there instead of building (the README test does).
if [ -n "${KAGI_BIN_DIR:-}" ]; then K="$KAGI_BIN_DIR/kagi"; else
    cargo build --release -q -p kagi-cli
    K="$PWD/target/release/kagi"
fi
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sp_port=$(free_port) mno_port=$(free_port) issuer_port=$(free_port)
json_field() { sed -n "s/.*\"$2\": *\"\([^\"]*\)\".*/\1/p" "$1" | head -n 1; }

echo "== the JPKI CAs, a SIM of the operator's (no provider domain), its key certified by the maker"
"$K" ca init --dir "$work/pki" >/dev/null
"$K" sim provision --sim-image "$work/sim.img" --serial jpki-sim-1 --no-domain \
    --manufacturer-ca "$work/maker" --json >"$work/sim.json"
iccid=$(json_field "$work/sim.json" iccid)

echo "== three organisations, three configurations"
"$K" sp-tsm init --dir "$work/sp-tsm" --listen "127.0.0.1:$sp_port" >/dev/null
"$K" mno-tsm init --dir "$work/mno-tsm" --listen "127.0.0.1:$mno_port" \
    --sp-tsm-key "$work/sp-tsm/tsm.pub.pem" >/dev/null
"$K" jpki-issuer init --dir "$work/issuer" --listen "127.0.0.1:$issuer_port" \
    --sp-tsm-key "$work/sp-tsm/tsm.pub.pem" --ca-dir "$work/pki" \
    --manufacturer-ca "$work/maker/manufacturer-ca.crt.pem" >/dev/null
mode=${KAGI_KEY_GENERATION:-on-card}
case "$mode" in on-card | issuer) ;; *) echo "KAGI_KEY_GENERATION is on-card or issuer, not $mode" >&2; exit 2 ;; esac
cat "$work/mno-tsm/sp-tsm-link.toml" >>"$work/sp-tsm/tsm.toml"
sed "s/^key_generation = .*/key_generation = \"$mode\"/" "$work/issuer/sp-tsm-link.toml" >>"$work/sp-tsm/tsm.toml"
echo "   key generation: $mode"
echo "   JPKI issuer: signing key, UA CA key (file key store), signature CA + CRL, $work/issuer/jpki-issuer.db"
echo "   SP-TSM:      signing key, provider domain keys, $work/sp-tsm/tsm.db"
echo "   MNO-TSM:     signing key, issuer-domain keys, SIM registry, $work/mno-tsm/mno-tsm.db"
"$K" jpki-issuer serve --config "$work/issuer/jpki-issuer.toml" 2>"$work/issuer.log" & pids+=($!)
"$K" mno-tsm serve --config "$work/mno-tsm/mno-tsm.toml" --insecure-file-keys "$work/mno-tsm/keys" 2>"$work/mno.log" & pids+=($!)
"$K" sp-tsm serve --config "$work/sp-tsm/tsm.toml" --insecure-file-keys "$work/sp-tsm/keys" 2>"$work/sp.log" & pids+=($!)
for p in "$issuer_port" "$mno_port" "$sp_port"; do
    for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break; sleep 0.1; done
done
"$K" tsm mno --config "$work/mno-tsm/operator.toml" register-card --iccid "$iccid" \
    --cin "$(json_field "$work/sim.json" cin)" \
    --card-certificate "$(json_field "$work/sim.json" card_certificate)" >/dev/null

echo "== ② the user applies, signed with the My Number card's signature key"
echo ABC123 >"$work/sign-password.txt"
"$K" jpki apply --sim --sim-preset jpki-demo --sim-image "$work/mynumber.img" --sim-pki-dir "$work/pki" \
    --iccid "$iccid" --provider sp:kagi-bank --contact holder@example.jp \
    --pin-file "$work/sign-password.txt" --out "$work/application.bin" 2>/dev/null

if [ "$mode" = on-card ]; then
    echo "== ⑤ the provider passes it to the SP-TSM (the key is made on the SIM during the download)"
else
    echo "== ⑤⑯⑰ the provider passes it to the SP-TSM, which gets the credential from the issuer"
fi
echo "demo password" >"$work/password.txt"
"$K" tsm provider --config "$work/sp-tsm/sp.toml" apply --iccid "$iccid" \
    --application "$work/application.bin" --password-file "$work/password.txt" --out "$work/issue.json"
op=$(json_field "$work/issue.json" op)
json_field "$work/issue.json" ticket >"$work/ticket.txt"

echo "== ⑪ the SP-TSM mailed the access code to the user (its maildir outbox; the provider never saw it)"
mail=$(ls "$work"/sp-tsm/outbox/new/*)
sed -n 's/^To: //p' "$mail" | tr -d '\r'
sed -n 's/^Access code: \([0-9-]*\).*/\1/p' "$mail" | tr -d '\r' >"$work/code.txt"
[ -s "$work/code.txt" ] || { echo "no access code in $mail" >&2; exit 1; }

if [ "$mode" = on-card ]; then
    echo "== ⑬⑭⑮⑯⑰⑱ the relay over an LTE-like link: SP-TSM, MNO-TSM, SP-TSM (the SIM makes the key, the issuer certifies it)"
else
    echo "== ⑬⑭⑮⑱ the relay over an LTE-like link: SP-TSM, MNO-TSM, SP-TSM"
fi
"$K" relay --tsm "http://127.0.0.1:$sp_port" --ticket-file "$work/ticket.txt" \
    --access-code-file "$work/code.txt" --password-file "$work/password.txt" \
    --sim --sim-image "$work/sim.img" --link lte --json >"$work/relay.json"
seconds=$(sed -n 's/.*"seconds": *\([0-9.]*\).*/\1/p' "$work/relay.json")

echo "== the holder signs with the credential, the PIN from the issuer's PIN mailer"
pin_file=$(ls "$work"/issuer/pin-mailer/*.pin)
echo "jpki sim demo" >"$work/msg.txt"
"$K" jpki sign --sim --sim-image "$work/sim.img" --pin-file "$pin_file" -i "$work/msg.txt" -o "$work/msg.sig"
"$K" tsm provider --config "$work/sp-tsm/sp.toml" check --credential "$op"

echo "== the holder sets a PIN of their own on the SIM's applet (with the mailed one)"
mailed=$(tr -d '[:space:]' <"$pin_file")
own=8642; [ "$mailed" = "$own" ] && own=8643
(umask 077 && echo "$own" >"$work/own.pin")
"$K" jpki change-pin --sim --sim-image "$work/sim.img" --pin-file "$pin_file" --new-pin-file "$work/own.pin"
"$K" jpki sign --sim --sim-image "$work/sim.img" --pin-file "$work/own.pin" -i "$work/msg.txt" -o "$work/msg.sig"

echo "== suspended at the holder's request (at the issuer: certificateHold on its CRL), then resumed"
issuer_crl() { "$K" jpki-issuer crl --config "$work/issuer/jpki-issuer.toml" --out "$work/ua-crl.der" >/dev/null; }
read_with_crl() {
    rc=0
    "$K" eligibility read --sim --sim-image "$work/sim.img" --ca "$work/pki/auth-ca.crt.pem" \
        --crl "$work/ua-crl.der" >"$work/verdict.txt" || rc=$?
    sed -n 1p "$work/verdict.txt"
}
"$K" tsm provider --config "$work/sp-tsm/sp.toml" suspend --credential "$op" >/dev/null
issuer_crl
read_with_crl
[ "$rc" -eq 4 ] || { echo "expected the eligibility read to refuse a suspended phone (exit code 4)" >&2; exit 1; }
"$K" tsm provider --config "$work/sp-tsm/sp.toml" resume --credential "$op" >/dev/null
issuer_crl
read_with_crl
[ "$rc" -eq 0 ] || { echo "expected the resumed phone to be eligible" >&2; exit 1; }

echo "== the My Number card's signature certificate revoked at the CA: linked revocation"
sign_serial=$("$K" --json tsm provider --config "$work/sp-tsm/sp.toml" check --credential "$op" |
    sed -n 's/.*"my_number_sign_serial": *"\([^"]*\)".*/\1/p')
"$K" ca revoke --kind sign --dir "$work/pki" "$sign_serial" >/dev/null
"$K" tsm provider --config "$work/sp-tsm/sp.toml" check --credential "$op"
# The relying party reads the issuer's CRL (signed by the UA CA), not the SP-TSM's list.
issuer_crl
read_with_crl
[ "$rc" -eq 4 ] || { echo "expected the eligibility read to say revoked (exit code 4)" >&2; exit 1; }

echo
echo "download time over the LTE-like link: ${seconds} s; linked revocation reached the SP-TSM and, through the issuer's CRL, the eligibility read"

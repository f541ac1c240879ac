#!/usr/bin/env bash
# TSM figures (run by scripts/bench.sh, or alone after `cargo build --release -p kagi-cli`):
#  1. one JPKI download (RSA-2048 credential; without and with the SIM-class card timing model)
#     and one wallet write (member id + points in one operation, SIM timing) over no link, an
#     LTE-like (50 ms) and a 3G-like (300 ms round trip) link — next to the 2012 trial's ~6 s
#     for ID and point data;
#  2. load: `kagi tsm load` (a separate process, loopback) drives 1000 complete download
#     sessions, 8 at a time, against one TSM on SQLite, then on a private PostgreSQL;
#     sessions/s and the TSM's own time per session (p50/p99); then an open load (`--rate`)
#     at 150 and 300 sessions/s on SQLite, its p99 against the 50 ms goal;
#  3. the three organisations (SP-TSM, MNO-TSM, JPKI issuer): one application-to-credential
#     path per link, whole sessions under load, then applications and downloads timed apart.
# Stops only the processes and the PostgreSQL instance it started.
set -euo pipefail
cd "$(dirname "$0")/.."
K="$PWD/target/release/kagi"
work=$(mktemp -d)
chmod 755 "$work"
tsm_pid=""
three_pids=()
cleanup() {
    [ -n "$tsm_pid" ] && kill "$tsm_pid" 2>/dev/null && wait "$tsm_pid" 2>/dev/null
    for p in "${three_pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
    [ -d "$work/pg/data" ] && bash scripts/private-postgres.sh stop "$work/pg"
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
json_field() { sed -n "s/.*\"$2\": *\"\([^\"]*\)\".*/\1/p" "$1" | head -n 1; }
start_tsm() { # $1: config dir, rest: extra serve arguments
    local dir=$1; shift
    KAGI_LOG=warn "$K" tsm serve --config "$dir/tsm.toml" --insecure-file-keys "$dir/keys" --rate-per-second 0 --max-connections 4096 "$@" 2>"$dir/log" &
    tsm_pid=$!
    local port; port=$(sed -n 's/^listen = "127.0.0.1:\([0-9]*\)"/\1/p' "$dir/tsm.toml")
    for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return; sleep 0.1; done
    echo "the TSM did not start" >&2; exit 1
}
stop_tsm() { kill "$tsm_pid"; wait "$tsm_pid" 2>/dev/null || true; tsm_pid=""; }

port=$(free_port)
"$K" tsm init --dir "$work/tsm" --listen "127.0.0.1:$port" >/dev/null
"$K" ca init --dir "$work/pki" >/dev/null
echo 1357 >"$work/pin.txt"
echo "bench password" >"$work/pw.txt"
echo ABC123 >"$work/sign-password.txt"
start_tsm "$work/tsm"
echo "== one download per link, relay session only: a JPKI credential (RSA-2048) on the plain"
echo "   simulator and with the SIM-class timing model (--sim-timing sim), and wallet data (a"
echo "   member id and points written in one operation, as seed 003's trial did in ~6 s in 2012)"
n=0
sim_for() { # $1: n; prints the ICCID of a fresh SIM registered at the MNO side
    "$K" sim provision --sim-image "$work/sim$1.img" --serial "bench-$1" \
        --provider-keys "$work/tsm/keys/provider.keys" --manufacturer-ca "$work/maker" \
        --json >"$work/sim$1.json"
    "$K" tsm mno --config "$work/tsm/mno.toml" register-card --iccid "$(json_field "$work/sim$1.json" iccid)" \
        --cin "$(json_field "$work/sim$1.json" cin)" \
        --card-certificate "$(json_field "$work/sim$1.json" card_certificate)" >/dev/null
    json_field "$work/sim$1.json" iccid
}
relay_run() { # $1: n, $2: link, $3: label, rest: relay arguments
    local i=$1 link=$2 label=$3; shift 3
    json_field "$work/issue$i.json" ticket >"$work/t$i"
    json_field "$work/issue$i.json" access_code >"$work/c$i"
    printf '  %-5s %-22s ' "$link" "$label"
    "$K" relay --tsm "http://127.0.0.1:$port" --ticket-file "$work/t$i" --access-code-file "$work/c$i" \
        --password-file "$work/pw.txt" --sim --sim-image "$work/sim$i.img" --link "$link" "$@"
}
for link in none lte 3g; do
    for timing in none sim; do
        n=$((n + 1))
        iccid=$(sim_for $n)
        # The user's application, signed with a simulated My Number card of the test CAs.
        "$K" jpki apply --sim --sim-preset jpki-demo --sim-image "$work/mynumber.img" --sim-pki-dir "$work/pki" \
            --iccid "$iccid" --provider sp:kagi-bank --contact holder@example.jp \
            --pin-file "$work/sign-password.txt" --out "$work/app$n.bin" 2>/dev/null >/dev/null
        "$K" tsm provider --config "$work/tsm/sp.toml" issue --rsa --iccid "$iccid" --ca-dir "$work/pki" \
            --manufacturer-ca "$work/maker/manufacturer-ca.crt.pem" --application "$work/app$n.bin" \
            --pin-file "$work/pin.txt" --password-file "$work/pw.txt" --out "$work/issue$n.json" >/dev/null
        if [ "$timing" = none ]; then
            relay_run $n "$link" "JPKI"
        else
            relay_run $n "$link" "JPKI, SIM timing" --sim-timing "$timing"
        fi
    done
    n=$((n + 1))
    iccid=$(sim_for $n)
    "$K" tsm provider --config "$work/tsm/sp.toml" wallet --iccid "$iccid" --member "M-0012345678" \
        --points 120 --password-file "$work/pw.txt" --out "$work/issue$n.json" >/dev/null
    relay_run $n "$link" "ID + points, SIM tim." --sim-timing sim
done
stop_tsm

echo "== load: 1000 download sessions, 8 at a time, load generator in its own process"
load() { # $1: label, rest: serve arguments
    local label=$1; shift
    local p; p=$(free_port)
    rm -rf "$work/load"
    "$K" tsm init --dir "$work/load" --listen "127.0.0.1:$p" >/dev/null
    start_tsm "$work/load" "$@"
    printf '  %-10s ' "$label"
    "$K" tsm load --sp "$work/load/sp.toml" --mno "$work/load/mno.toml" \
        --provider-keys "$work/load/keys/provider.keys" --ca-dir "$work/pki" \
        --sessions 1000 --concurrency 8 --max-seconds 60 2>/dev/null
    stop_tsm
}
load sqlite
echo "== open load: sessions due at a fixed rate (at most 64 in flight), SQLite; the rate the TSM"
echo "   serves with a p99 of 50 ms or less is its capacity at that latency goal"
for rate in 150 300; do
    p=$(free_port)
    rm -rf "$work/load"
    "$K" tsm init --dir "$work/load" --listen "127.0.0.1:$p" >/dev/null
    start_tsm "$work/load"
    printf '  %3s/s      ' "$rate"
    "$K" tsm load --sp "$work/load/sp.toml" --mno "$work/load/mno.toml" \
        --provider-keys "$work/load/keys/provider.keys" --ca-dir "$work/pki" \
        --sessions $((rate * 10)) --concurrency 64 --rate "$rate" --max-seconds 60 2>/dev/null
    stop_tsm
done
pg=$(bash scripts/private-postgres.sh start "$work/pg" "$(free_port)")
load postgresql --database "$pg"

echo "== three organisations, each its own process and SQLite database on these 2 cores (SP-TSM,"
echo "   MNO-TSM, JPKI issuer): one session per link from the user's application (signed on the"
echo "   My Number card, modern timing) to the credential on the SIM (SIM timing), then 1000"
echo "   sessions (application, issuer's key and certificate, mailed access code, relay session)"
three="$work/three"
sp_port=$(free_port) mno_port=$(free_port) issuer_port=$(free_port)
"$K" sim provision --sim-image "$three/x.img" --serial x --no-domain --manufacturer-ca "$three/maker" >/dev/null
"$K" sp-tsm init --dir "$three/sp-tsm" --listen "127.0.0.1:$sp_port" >/dev/null
"$K" mno-tsm init --dir "$three/mno-tsm" --listen "127.0.0.1:$mno_port" \
    --sp-tsm-key "$three/sp-tsm/tsm.pub.pem" >/dev/null
"$K" jpki-issuer init --dir "$three/issuer" --listen "127.0.0.1:$issuer_port" \
    --sp-tsm-key "$three/sp-tsm/tsm.pub.pem" --ca-dir "$work/pki" \
    --manufacturer-ca "$three/maker/manufacturer-ca.crt.pem" >/dev/null
# The seed's mode (the issuer makes the key), as the README's figures were measured.
cat "$three/mno-tsm/sp-tsm-link.toml" >>"$three/sp-tsm/tsm.toml"
sed 's/^key_generation = .*/key_generation = "issuer"/' "$three/issuer/sp-tsm-link.toml" >>"$three/sp-tsm/tsm.toml"
# Three services and the load generator on 2 cores: one worker thread each serves more, with
# lower tails, than two (fewer thread switches; measured 2026-12-05).
KAGI_LOG=warn "$K" jpki-issuer serve --config "$three/issuer/jpki-issuer.toml" --workers 1 2>"$three/issuer.log" &
three_pids+=($!)
KAGI_LOG=warn "$K" mno-tsm serve --config "$three/mno-tsm/mno-tsm.toml" --insecure-file-keys "$three/mno-tsm/keys" \
    --rate-per-second 0 --max-connections 4096 --workers 1 2>"$three/mno.log" &
three_pids+=($!)
KAGI_LOG=warn "$K" sp-tsm serve --config "$three/sp-tsm/tsm.toml" --insecure-file-keys "$three/sp-tsm/keys" \
    --rate-per-second 0 --max-connections 4096 --workers 1 2>"$three/sp.log" &
three_pids+=($!)
for p in "$issuer_port" "$mno_port" "$sp_port"; do
    for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break; sleep 0.1; done
done
echo ABC123 >"$three/sign-password.txt"
echo "bench password" >"$three/pw.txt"
i=0
for link in lte 3g; do
    i=$((i + 1))
    "$K" sim provision --sim-image "$three/sim$i.img" --serial "three-$i" --no-domain \
        --manufacturer-ca "$three/maker" --json >"$three/sim$i.json"
    iccid=$(json_field "$three/sim$i.json" iccid)
    "$K" tsm mno --config "$three/mno-tsm/operator.toml" register-card --iccid "$iccid" \
        --cin "$(json_field "$three/sim$i.json" cin)" \
        --card-certificate "$(json_field "$three/sim$i.json" card_certificate)" >/dev/null
    # The My Number card made beforehand (its RSA keys), so the clock sees only the session.
    "$K" jpki info --sim --sim-preset jpki-demo --sim-image "$three/mynumber$i.img" \
        --sim-pki-dir "$work/pki" >/dev/null 2>&1
    rm -f "$three"/sp-tsm/outbox/new/*
    t0=$(date +%s.%N)
    "$K" jpki apply --sim --sim-image "$three/mynumber$i.img" --sim-timing modern \
        --iccid "$iccid" --provider sp:kagi-bank --contact holder@example.jp \
        --pin-file "$three/sign-password.txt" --out "$three/app$i.bin" >/dev/null 2>&1
    "$K" tsm provider --config "$three/sp-tsm/sp.toml" apply --iccid "$iccid" \
        --application "$three/app$i.bin" --password-file "$three/pw.txt" --out "$three/issue$i.json" >/dev/null
    json_field "$three/issue$i.json" ticket >"$three/t$i"
    mail=""
    for _ in $(seq 1 500); do mail=$(ls "$three"/sp-tsm/outbox/new/* 2>/dev/null | head -n 1); [ -n "$mail" ] && break; sleep 0.01; done
    sed -n 's/^Access code: \([0-9-]*\).*/\1/p' "$mail" | tr -d '\r' >"$three/c$i"
    "$K" relay --tsm "http://127.0.0.1:$sp_port" --ticket-file "$three/t$i" --access-code-file "$three/c$i" \
        --password-file "$three/pw.txt" --sim --sim-image "$three/sim$i.img" --link "$link" \
        --sim-timing sim --json >"$three/relay$i.json"
    t1=$(date +%s.%N)
    printf '  %-5s application to credential, card timing models on: %.2f s (relay session %s s)\n' \
        "$link" "$(python3 -c "print($t1 - $t0)")" "$(sed -n 's/.*"seconds": *\([0-9.]*\).*/\1/p' "$three/relay$i.json")"
done
printf '  %-10s ' "sqlite"
"$K" tsm load --sp "$three/sp-tsm/sp.toml" --mno "$three/mno-tsm/operator.toml" --ca-dir "$work/pki" \
    --outbox "$three/sp-tsm/outbox" --manufacturer-ca "$three/maker" \
    --sessions 1000 --concurrency 8 --max-seconds 120 2>/dev/null
echo "   the same, applications first (timed on their own), then the download sessions alone"
echo "   (the SP-TSM with the MNO-TSM; the user applies and downloads at different times):"
echo "   1000 closed (8 in flight), then 3000 started at 300 per second (open, the goal's rate)"
"$K" tsm load --sp "$three/sp-tsm/sp.toml" --mno "$three/mno-tsm/operator.toml" --ca-dir "$work/pki" \
    --outbox "$three/sp-tsm/outbox" --manufacturer-ca "$three/maker" --applications-first \
    --sessions 1000 --concurrency 8 --max-seconds 120 2>/dev/null | sed 's/^/  /'
"$K" tsm load --sp "$three/sp-tsm/sp.toml" --mno "$three/mno-tsm/operator.toml" --ca-dir "$work/pki" \
    --outbox "$three/sp-tsm/outbox" --manufacturer-ca "$three/maker" --applications-first \
    --sessions 3000 --concurrency 64 --rate 300 --max-seconds 120 2>/dev/null | sed 's/^/  /'

#!/usr/bin/env bash
# TSM figures (run by scripts/bench.sh, or alone after `cargo build --release -p kagi-cli`):
#  1. one JPKI download (RSA-2048 credential) over no link, an LTE-like (50 ms) and a 3G-like
#     (300 ms round trip) link — next to the 2012 trial's ~6 s;
#  2. load: `kagi tsm load` (a separate process, loopback) drives 1000 complete download
#     sessions, 8 at a time, against one TSM on SQLite, then on a private PostgreSQL;
#     sessions/s and the TSM's own time per session (p50/p99).
# Stops only the processes and the PostgreSQL instance it started.
set -euo pipefail
cd "$(dirname "$0")/.."
K="$PWD/target/release/kagi"
work=$(mktemp -d)
chmod 755 "$work"
tsm_pid=""
cleanup() {
    [ -n "$tsm_pid" ] && kill "$tsm_pid" 2>/dev/null && wait "$tsm_pid" 2>/dev/null
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
start_tsm "$work/tsm"
echo "== one JPKI download (RSA-2048 credential) per link; the 2012 trial took ~6 s"
n=0
for link in none lte 3g; do
    n=$((n + 1))
    "$K" sim provision --sim-image "$work/sim$n.img" --serial "bench-$n" \
        --provider-keys "$work/tsm/keys/provider.keys" --manufacturer-ca "$work/maker" \
        --json >"$work/sim$n.json"
    iccid=$(json_field "$work/sim$n.json" iccid)
    "$K" tsm mno --config "$work/tsm/mno.toml" register-card --iccid "$iccid" \
        --cin "$(json_field "$work/sim$n.json" cin)" \
        --card-certificate "$(json_field "$work/sim$n.json" card_certificate)" >/dev/null
    "$K" tsm provider --config "$work/tsm/sp.toml" issue --rsa --iccid "$iccid" --ca-dir "$work/pki" \
        --manufacturer-ca "$work/maker/manufacturer-ca.crt.pem" \
        --pin-file "$work/pin.txt" --password-file "$work/pw.txt" --out "$work/issue$n.json" >/dev/null
    json_field "$work/issue$n.json" ticket >"$work/t$n"
    json_field "$work/issue$n.json" access_code >"$work/c$n"
    printf '  %-5s ' "$link"
    "$K" relay --tsm "http://127.0.0.1:$port" --ticket-file "$work/t$n" --access-code-file "$work/c$n" \
        --password-file "$work/pw.txt" --sim --sim-image "$work/sim$n.img" --link "$link"
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
pg=$(bash scripts/private-postgres.sh start "$work/pg" "$(free_port)")
load postgresql --database "$pg"

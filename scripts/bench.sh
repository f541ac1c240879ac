#!/usr/bin/env bash
# Benchmarks: throughputs and ratios on this machine (see `kagi bench --help`).
#   SCP03 host crypto, simulator APDUs, SCP03 vs plain round trips (in process), then APDU
#   round trips through a private pcscd + vpcd (scripts/pcsc-sandbox.sh).
# Extra arguments (e.g. --seconds 2, --json) go to the in-process run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --quiet --release -p kagi-cli
./target/release/kagi bench "$@"
bash scripts/pcsc-sandbox.sh --preset jpki-demo -- ./target/release/kagi bench --reader "Virtual PCD 00 00" --count 2000

# Personalisation throughput: the data-only example profile across 16 simulated stations,
# 2000 synthetic records, without card images (pure throughput) and with them (resumable).
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
{
    echo "id,member_no,name,points"
    for i in $(seq 0 1999); do echo "B$i,$((300000 + i)),BENCH MEMBER $i,$i"; done
} >"$tmp/records.csv"
for mode in --no-images ""; do
    TIMEFORMAT="  host CPU: %U s user + %S s system for 2000 cards"
    time ./target/release/kagi perso run --profile examples/perso-member.toml --input "$tmp/records.csv" \
        --sim 16 --out "$tmp/out$mode" --insecure-file-keys examples/keys $mode 2>/dev/null
done

# The same 2000 cards with the master keys in SoftHSM2 (kdf3 diversification in the HSM).
eval "$(bash scripts/softhsm-init.sh "$tmp/hsm")"
./target/release/kagi perso hsm-import --hsm-module /usr/lib/softhsm/libsofthsm2.so \
    --hsm-pin-file "$tmp/hsm/user.pin" --key-file examples/keys/master.keys >/dev/null
./target/release/kagi perso hsm-import --hsm-module /usr/lib/softhsm/libsofthsm2.so --hsm-key provider \
    --hsm-pin-file "$tmp/hsm/user.pin" --key-file examples/keys/provider.keys >/dev/null
TIMEFORMAT="  host CPU: %U s user + %S s system for 2000 cards (HSM)"
time ./target/release/kagi perso run --profile examples/perso-member.toml --input "$tmp/records.csv" \
    --sim 16 --out "$tmp/out-hsm" --no-images --hsm-module /usr/lib/softhsm/libsofthsm2.so \
    --hsm-pin-file "$tmp/hsm/user.pin" --transport-keys examples/keys/transport.keys 2>/dev/null

# The JPKI profile: two RSA-2048 keys generated on each card, certificates from the test CA,
# PINs into the encrypted mailer; 64 cards on 2 stations, with where the time goes.
cp -r examples "$tmp/ex"
{
    echo "id,name,address,birth_date,sex,my_number"
    for i in $(seq 0 63); do echo "J$i,TEST HOLDER $i (TEST ONLY),$i TEST TOWN (TEST ONLY),19900101,9,$(printf %012d "$i")"; done
} >"$tmp/jpki.csv"
TIMEFORMAT="  host CPU: %U s user + %S s system for 64 JPKI cards"
time ./target/release/kagi perso run --profile "$tmp/ex/perso-jpki.toml" --input "$tmp/jpki.csv" \
    --sim 2 --out "$tmp/jpki-out" --insecure-file-keys "$tmp/ex/keys" 2>/dev/null

# The data-only profile on 4 PC/SC readers through a private pcscd + vpcd: simulated cards fed
# from hoppers, swapped by the feeder command after each card. The simulated swap keeps a
# slot empty for 600 ms (longer than pcscd's presence polling), which bounds cards/s here;
# "where the time goes" is kagi's own time per card on the reader.
{
    echo "id,member_no,name,points"
    for i in $(seq 0 39); do echo "V$i,$((700000 + i)),VPCD MEMBER $i,$i"; done
} >"$tmp/vpcd.csv"
TIMEFORMAT="  host CPU (kagi, pcscd and simulator together): %U s user + %S s system for 40 cards"
time bash scripts/pcsc-sandbox.sh --cards 4 --hopper -- ./target/release/kagi perso run --readers all \
    --profile examples/perso-member.toml --input "$tmp/vpcd.csv" --out "$tmp/vpcd-out" \
    --insecure-file-keys examples/keys --feeder-cmd "bash scripts/sandbox-next-card.sh" 2>/dev/null

# The TSM: download time per link, and sessions/s under load on SQLite and PostgreSQL.
bash scripts/tsm-bench.sh

# The credential broker at the seed's scale: 100,000 cards × 10 services = 1,000,000
# credentials, sealed under a KEK in SoftHSM2; lookup+unwrap+use latency, card logins per
# second over HTTP, database size, KEK rotation time (scripts/broker-scale.sh for options).
bash scripts/broker-scale.sh

# Java Card VM (#15): bytecodes/s on a tight loop, a Java Card echo APDU against the native
# echo applet (ratio), LOAD+INSTALL of GlobalPlatformPro's empty applet and IsoApplet, and
# IsoApplet's RSA-2048 / ECDSA P-256 signatures per second against the native JPKI applet's
# signing primitive (ratio; goal <= 1.2).
cargo test --quiet --release -p kagi-jcvm --test conformance -- --ignored --nocapture measure 2>&1 | grep MEASURE
cargo test --quiet --release -p applet-sim --test jcvm -- --include-ignored --nocapture --test-threads=1 2>&1 | grep MEASURE

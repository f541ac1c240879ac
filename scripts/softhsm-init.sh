#!/usr/bin/env bash
# Creates a private SoftHSM2 token for kagi in DIR (its own configuration and token
# directory; the machine's SoftHSM2 setup is never touched): token label "kagi", a random user
# PIN in DIR/user.pin (mode 0600) and a random SO PIN in DIR/so.pin. Then use it with
#   export SOFTHSM2_CONF=DIR/softhsm2.conf
#   kagi perso hsm-import --hsm-module /usr/lib/softhsm/libsofthsm2.so \
#       --hsm-pin-file DIR/user.pin --key-file master.keys
# Usage: scripts/softhsm-init.sh DIR
set -euo pipefail
dir=${1:?usage: scripts/softhsm-init.sh DIR}
here=$(cd "$(dirname "$0")" && pwd)
[ -e /usr/lib/softhsm/libsofthsm2.so ] || bash "$here/setup.sh"
mkdir -p "$dir/tokens"
dir=$(cd "$dir" && pwd)
umask 077
printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' "$dir" >"$dir/softhsm2.conf"
[ -s "$dir/user.pin" ] || od -An -N8 -tx1 /dev/urandom | tr -d ' \n' >"$dir/user.pin"
[ -s "$dir/so.pin" ] || od -An -N8 -tx1 /dev/urandom | tr -d ' \n' >"$dir/so.pin"
export SOFTHSM2_CONF="$dir/softhsm2.conf"
# The PINs go to OpenSC's pkcs11-tool through its `env:` form, never on a command line
# (softhsm2-util takes them only as arguments or from a terminal).
if ! softhsm2-util --show-slots 2>/dev/null | grep -q 'Label:\s*kagi\s*$'; then
    module=/usr/lib/softhsm/libsofthsm2.so
    KAGI_SO_PIN=$(cat "$dir/so.pin") KAGI_USER_PIN=$(cat "$dir/user.pin")
    export KAGI_SO_PIN KAGI_USER_PIN
    p11() { out=$(pkcs11-tool --module "$module" "$@" 2>&1) || { echo "$out" >&2; exit 1; }; }
    p11 --init-token --label kagi --so-pin env:KAGI_SO_PIN
    p11 --token-label kagi --init-pin --so-pin env:KAGI_SO_PIN --pin env:KAGI_USER_PIN
    unset KAGI_SO_PIN KAGI_USER_PIN
fi
echo "export SOFTHSM2_CONF=$dir/softhsm2.conf"

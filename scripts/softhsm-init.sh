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
if ! softhsm2-util --show-slots 2>/dev/null | grep -q 'Label:\s*kagi\s*$'; then
    softhsm2-util --init-token --free --label kagi \
        --so-pin "$(cat "$dir/so.pin")" --pin "$(cat "$dir/user.pin")" >/dev/null
fi
echo "export SOFTHSM2_CONF=$dir/softhsm2.conf"

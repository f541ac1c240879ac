#!/usr/bin/env bash
# Installs what kagi's build and tests need on a Debian machine, only when it is missing:
# the PC/SC headers for the `pcsc` crate (libpcsclite-dev, pkg-config), and the real PC/SC
# stack the integration tests drive (pcscd, vsmartcard-vpcd, opensc), SoftHSM2 as the
# PKCS#11 HSM that holds the tests' master keys, and PostgreSQL (the TSM's shared-state
# database; the tests start private instances, never the machine's) with pg_auto_failover,
# and aiosmtpd (a private SMTP server for the mail sender's tests).
# Safe to run again; does nothing when everything is present.
set -euo pipefail

need=()
pkg-config --exists libpcsclite 2>/dev/null || need+=(libpcsclite-dev)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v pcscd >/dev/null 2>&1 || need+=(pcscd)
[ -e /usr/lib/pcsc/drivers/serial/libifdvpcd.so ] || need+=(vsmartcard-vpcd)
command -v opensc-tool >/dev/null 2>&1 || need+=(opensc)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v jq >/dev/null 2>&1 || need+=(jq)
[ -e /usr/lib/softhsm/libsofthsm2.so ] || need+=(softhsm2)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
# aiosmtpd: the private SMTP server the mail sender's tests start (STARTTLS, a maildir).
/usr/bin/python3 -c 'import aiosmtpd' >/dev/null 2>&1 || need+=(python3-aiosmtpd)
# pg_auto_failover (the highly available formation the failover tests start): its extension
# is built per PostgreSQL major version; Debian bookworm's PostgreSQL is 15.
command -v pg_autoctl >/dev/null 2>&1 || need+=(pg-auto-failover-cli)
pgmajor=$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n 1)
ls /usr/lib/postgresql/*/lib/pgautofailover.so >/dev/null 2>&1 || need+=("postgresql-${pgmajor:-15}-auto-failover")

if [ ${#need[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "kagi setup: missing ${need[*]} and no apt-get; install them with your package manager" >&2
        exit 1
    fi
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "kagi setup: installing ${need[*]}" >&2
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

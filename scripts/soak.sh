#!/usr/bin/env bash
# The 24-hour-operation soak run (not in CI): two broker instances on a private
# pg_auto_failover formation (monitor, primary, synchronous secondary) under a steady load of
# acts, the primary killed every few minutes and a KEK rotation started after each failover.
# Prints, every interval, the acts answered and tries failed, latency percentiles, and the
# memory of the brokers and of each postmaster; at the end checks that every record opens and
# every card answers as before. Stops only the processes it started.
#
#   scripts/soak.sh [MINUTES] [FAILOVER_EVERY_MINUTES]     # defaults 30 and 5
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-30}
every=${2:-5}
bash scripts/setup.sh
export KAGI_SOAK_SECONDS=$((minutes * 60)) KAGI_SOAK_FAILOVER_SECONDS=$((every * 60))
export KAGI_SOAK_INTERVAL_SECONDS=${KAGI_SOAK_INTERVAL_SECONDS:-30}
cargo test --release -q -p broker-server --test races -- --ignored --exact soak_on_a_formation \
    --nocapture

#!/usr/bin/env bash
# The whole kagi test suite, from a clean clone on a fresh Debian machine:
# installs what is missing, checks formatting and lints, then runs every unit, property and
# integration test: among them the public known-answer vectors through the host and card
# implementations (test-vectors/tests/vectors.rs, counts pinned; ../shared/test-vectors is
# required when CI=true) and the tests that start a private pcscd with a virtual reader.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

# A clean clone builds everything once: incremental compilation only adds work there.
if [ "${CI:-}" = "true" ]; then
    export CARGO_INCREMENTAL=0
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# Into a file, not a pipe: a process a test failed to stop cannot hold the run open.
cargo test --workspace --no-fail-fast >"$log" 2>&1 || status=$?
cat "$log"
# One closing line for the whole suite: the sum over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "total: %d passed, %d failed\n", p, f }' "$log"
exit "$status"

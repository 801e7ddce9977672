#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, then every test
# against a real PostgreSQL and a real tansu broker.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$CHRONOLOG_ROOT"

install_tools
start_tansu_build
trap stop_tansu_build EXIT
log "cargo fmt --check"
cargo fmt --all --check
log "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
log "src/db/schema.rs against the migrations (diesel --locked-schema)"
scripts/check-schema.sh
log "building tests"
cargo build --all-targets --quiet
log "fuzz targets, briefly"
scripts/fuzz.sh
log "benchmark smoke (keeps loadtest/bench.sh working; asserts nothing about speed)"
loadtest/bench.sh --smoke >/dev/null
wait_tansu_build
log "unit and integration tests on real PostgreSQL and tansu"
if cargo nextest --version >/dev/null 2>&1; then
  scripts/with-deps.sh cargo nextest run --no-fail-fast "$@"
else
  scripts/with-deps.sh cargo test --no-fail-fast "$@"
fi

#!/usr/bin/env bash
# Usage: scripts/with-deps.sh COMMAND [ARGS...]
#
# Starts a throwaway PostgreSQL and a tansu broker (SQLite engine) on free
# ports, exports DATABASE_URL and KAFKA_BROKERS, runs COMMAND, then stops
# both and removes their data, whatever COMMAND's outcome.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

(($# > 0)) || die "usage: $0 COMMAND [ARGS...]"
install_deps
RIG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/chronolog-rig.XXXXXX")
cleanup() {
  local status=$?
  stop_tansu
  stop_postgres
  if ((status != 0)); then
    log "logs kept in $RIG_DIR"
  else
    rm -rf "$RIG_DIR"
  fi
}
trap cleanup EXIT
export PG_FSYNC=off  # throwaway data: durability of the test cluster is not under test
start_postgres "$RIG_DIR"
start_tansu "$RIG_DIR"
export CHRONOLOG_RIG_DIR="$RIG_DIR" TANSU_PID
"$@"

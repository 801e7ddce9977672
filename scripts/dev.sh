#!/usr/bin/env bash
# Runs chronolog with its dependencies on this machine, for a person to try:
# PostgreSQL and tansu in .chronolog/ (kept between runs), then every role
# on the default ports 7080 (commands) and 7081 (queries). Ctrl-C stops all.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$CHRONOLOG_ROOT"

install_deps
DEV_DIR="$CHRONOLOG_ROOT/.chronolog"
mkdir -p "$DEV_DIR"
cleanup() { stop_tansu; stop_postgres; }
trap cleanup EXIT

if [[ -d $DEV_DIR/pg/data ]]; then
  PG_DIR="$DEV_DIR/pg"; PG_PORT=$(free_port)
  as_pg pg_ctl -D "$PG_DIR/data" -l "$DEV_DIR/postgres.log" -w start \
    -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1" >/dev/null
  export DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
  log "PostgreSQL on 127.0.0.1:$PG_PORT"
else
  start_postgres "$DEV_DIR"
fi
# The broker runs in a process group of its own (job control), so that the
# terminal's Ctrl-C reaches chronolog alone: stopping gracefully, it leaves
# the group and commits its offsets while the broker is still there.
set -m
start_tansu "$DEV_DIR"

log "building chronolog (release; the first build takes about 5 minutes on 2 cores, later ones seconds)"
cargo build --release
log "chronolog: commands on http://127.0.0.1:7080, queries on http://127.0.0.1:7081 (Ctrl-C stops)"
# In the foreground: Ctrl-C reaches chronolog, which stops gracefully; the
# EXIT trap then stops the broker and the database.
"$CARGO_TARGET_DIR/release/chronolog" serve "$@" || log "chronolog exited with status $?"

#!/usr/bin/env bash
# Checks that the schema files named in diesel.toml (src/db/schema.rs for
# the timestamp view, src/accounts/, src/shop/ and src/outbox/schema.rs for
# their PostgreSQL schemas) are what `diesel print-schema` makes of the
# migrations: applies them to a throwaway PostgreSQL with --locked-schema. A
# change to migrations/ without regenerating the schema fails here.
#
# To regenerate: scripts/check-schema.sh --write
set -Eeuo pipefail
trap 'echo "check-schema.sh: failed at line $LINENO: $BASH_COMMAND" >&2' ERR
source "$(dirname "$0")/lib.sh"
cd "$CHRONOLOG_ROOT"

install_postgres
DIESEL_VERSION=2.3.14
if ! diesel --version 2>/dev/null | grep -q "$DIESEL_VERSION"; then
  apt_install libpq-dev
  log "building diesel_cli $DIESEL_VERSION (once per machine, a few minutes)"
  # Unoptimised: it only applies migrations and prints schemas, and an
  # optimised build of it took a fresh machine about 10 minutes.
  cargo install --quiet --locked --debug diesel_cli --version "$DIESEL_VERSION" --no-default-features --features postgres
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/chronolog-schema.XXXXXX")
trap 'stop_postgres; rm -rf "$WORK"' EXIT
PG_FSYNC=off start_postgres "$WORK"
# diesel.toml names the print-schema files: running the migrations
# regenerates them, and --locked-schema refuses to change them.
if [[ ${1:-} == --write ]]; then
  diesel migration run --database-url "$DATABASE_URL" >/dev/null
  log "schema files regenerated (src/db, src/accounts, src/shop, src/outbox)"
elif ! diesel migration run --locked-schema --database-url "$DATABASE_URL" >"$WORK/out" 2>&1; then
  cat "$WORK/out" >&2
  die "a schema file is not what the migrations make; run scripts/check-schema.sh --write"
fi

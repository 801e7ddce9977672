#!/usr/bin/env bash
# The benchmark: every figure next to a baseline measured in the same run.
#
#   loadtest/bench.sh                      # mock-cluster broker, 200,000 records, release build
#   loadtest/bench.sh --broker tansu       # a tansu broker started here
#   loadtest/bench.sh --broker HOST:PORT   # any broker (topics are created by chronolog)
#   loadtest/bench.sh --records 50000 --duration 20s --rounds 3
#   loadtest/bench.sh --smoke              # tiny and quick, debug build (CI keeps it working)
#   loadtest/bench.sh --only sink,rebuild  # some phases: ingest, keys, sink, rebuild, e2e, waiters
#   loadtest/bench.sh --only e2e --peak 75000   # e2e without measuring the peak first
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
#
# PostgreSQL is started here unless BENCH_DATABASE_URL names a server's
# maintenance database. Prints a Markdown table; see loadtest/RESULTS.md.
set -Eeuo pipefail
trap 'echo "bench.sh: failed at line $LINENO: $BASH_COMMAND" >&2' ERR
source "$(dirname "$0")/../scripts/lib.sh"
cd "$CHRONOLOG_ROOT"

RECORDS=200000 DURATION=10s BROKER=mock PROFILE=release CONNECTIONS=128 K6_RATE=2000 ROUNDS=5 E2E_MAX_RATE=1000000
PHASES=ingest,keys,sink,rebuild,e2e,waiters PEAK="" WAITERS=200
while (($#)); do
  case $1 in
    --smoke) RECORDS=2000 DURATION=2s PROFILE=dev CONNECTIONS=16 K6_RATE=100 ROUNDS=1 E2E_MAX_RATE=300 ;;
    --broker) BROKER=$2; shift ;;
    --records) RECORDS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --connections) CONNECTIONS=$2; shift ;;
    --only) PHASES=$2; shift ;;
    --peak) PEAK=$2; shift ;;
    *) die "unknown argument $1" ;;
  esac
  shift
done

want() { [[ ",$PHASES," == *",$1,"* ]]; }
for phase in ${PHASES//,/ }; do
  case $phase in ingest | keys | sink | rebuild | e2e | waiters) ;; *) die "unknown phase $phase (ingest, keys, sink, rebuild, e2e, waiters)" ;; esac
done
if want waiters && [[ ! $DURATION =~ ^[0-9]+s$ || ${DURATION%s} -ge 25 ]]; then
  die "the waiters phase holds its requests for one round of at most 30 s: give --duration in seconds, under 25s"
fi
if want e2e && ! want ingest && [[ -z $PEAK ]]; then
  die "the e2e phase runs at fractions of the ingestion peak: add ingest to --only, or give --peak REQUESTS_PER_SECOND"
fi

install_deps
apt_install time wrk
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

if [[ -n ${BENCH_DATABASE_URL:-} ]]; then export DATABASE_URL=$BENCH_DATABASE_URL; else start_postgres "$WORK"; fi
SERVER=${DATABASE_URL%/*}
psql_admin() { psql -qtA "$DATABASE_URL" -c "$1"; }
fresh_db() { local name="bench_$1_$RANDOM$RANDOM"; psql_admin "CREATE DATABASE $name" >/dev/null; echo "$SERVER/$name"; }
# migrated_db NAME: a fresh database with the view's (empty) tables.
migrated_db() { local db; db=$(fresh_db "$1"); "$BIN" migrate --database-url "$db" >/dev/null 2>&1; echo "$db"; }
drop_db() { psql_admin "DROP DATABASE ${1##*/}" >/dev/null; }

RUN=$(date +%s)
T_INGEST="bench-ingest-$RUN" T_SINK="bench-sink-$RUN" T_E2E="bench-e2e-$RUN" T_KEYS="bench-keys-$RUN" T_WAIT="bench-waiters-$RUN"
case $BROKER in
  # 8 partitions: the mock keeps 5 MiB per partition and drops older records.
  mock) start_mock_broker "$TOOL" "$WORK" 8 "$T_INGEST" "$T_SINK" "$T_E2E" "$T_KEYS" "$T_WAIT" ;;
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
# wait_rows URL N: seconds (fractional) from now until the view holds N rows,
# and from the first row to N rows.
wait_rows() {
  local url=$1 n=$2 start first="" now count
  start=$(date +%s.%N)
  while :; do
    count=$(psql -qtA "$url" -c "SELECT count(*) FROM timestamp_records" 2>/dev/null || echo 0)
    now=$(date +%s.%N)
    [[ -z $first && ${count:-0} -gt 0 ]] && first=$now
    ((${count:-0} >= n)) && break
    kill -0 "$APP_PID" 2>/dev/null || die "chronolog exited: $(tail -3 "$WORK"/*.log)"
    sleep 0.05
  done
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
  start_role sink --role consumer --consumer-addr 127.0.0.1:17182 --kafka-topic "$T_SINK" --kafka-group-id "sink-$RUN-$1" --database-url "$db"
  local total steady rate
  read -r total steady < <(wait_rows "$db" "$RECORDS")
  rate=$(awk -v n="$RECORDS" -v s="$steady" 'BEGIN { printf "%.0f", n / s }')
  SINK_RSS=$(max "$SINK_RSS" "$(peak_rss_mb "$APP_PID")")
  stop_app "$APP_PID"
  drop_db "$db"
  echo "$(ratio "$rate" "$2") $rate $2 $total" >>"$WORK/sink-rounds.txt"
  log "  round $1: COPY $2 rows/s, sink $rate rows/s, ratio $(ratio "$rate" "$2")"
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

if want sink || want rebuild; then
  log "sink and rebuild: $RECORDS records preloaded; $ROUNDS rounds of COPY, then the consumer and chronolog rebuild, each into an empty database"
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
  SINK_RSS=0 REBUILD_RSS=0
  for ((round = 1; round <= ROUNDS; round++)); do
    copy_rate=$(copy_round)
    if want sink; then sink_round "$round" "$copy_rate"; fi
    if want rebuild; then rebuild_round "$round" "$copy_rate"; fi
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
  # ticks_now FILE: CPU clock ticks used so far by every process, by pid.
  # (A process may exit between the glob and the read: cat then fails, harmlessly.)
  ticks_now() { { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk '{print $1, $14 + $15}' >"$1"; }
  # ticks_used BEFORE AFTER PID...: ticks the processes used between two
  # snapshots; a process started in between (a PostgreSQL backend) counts from zero.
  ticks_used() {
    local before=$1 after=$2; shift 2
    awk -v list=" $* " 'NR == FNR {s[$1] = $2; next} index(list, " " $1 " ") {d += $2 - s[$1]} END {print d + 0}' "$before" "$after"
  }
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
    PG_PIDS=$(pgrep -u postgres -d ' ' || true)
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
  WAIT_DB=$(fresh_db waiters)
  "$TOOL" preload "$KAFKA_BROKERS" "$T_WAIT" 1 >/dev/null
  start_role waiters --role query --role consumer --query-addr 127.0.0.1:17380 --kafka-topic "$T_WAIT" --kafka-group-id "waiters-$RUN" --database-url "$WAIT_DB"
  WAIT_PID=$APP_PID
  wait_http http://127.0.0.1:17380/health
  wait_rows "$WAIT_DB" 1 >/dev/null
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

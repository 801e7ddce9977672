#!/usr/bin/env bash
# The soak: chronolog under a steady open-loop load for a while, its RSS
# sampled every 10 s. Run on demand, not in CI.
#
#   loadtest/soak.sh                        # every role, 10 minutes, half the measured peak
#   loadtest/soak.sh --roles command        # the command API alone
#   loadtest/soak.sh --rate 8000 --minutes 30
#
# The peak is measured first (wrk POST, 3 rounds of 5 s) unless --rate is
# given. Prints the RSS series and a summary line: RSS after the first
# minute, at the end, their ratio, and (with the consumer role) the lag left.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$CHRONOLOG_ROOT"

MINUTES=10 RATE="" ROLES=""
while (($#)); do
  case $1 in
    --minutes) MINUTES=$2; shift ;;
    --rate) RATE=$2; shift ;;
    --roles) ROLES=$2; shift ;;
    *) die "unknown argument $1" ;;
  esac
  shift
done

install_deps
apt_install wrk
cargo build --quiet --release --bin chronolog --example bench_tool
BIN="$CARGO_TARGET_DIR/release/chronolog" TOOL="$CARGO_TARGET_DIR/release/examples/bench_tool"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/chronolog-soak.XXXXXX")
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  stop_mock_broker
  stop_postgres
  rm -rf "$WORK"
}
trap cleanup EXIT

start_postgres "$WORK"
start_mock_broker "$TOOL" "$WORK" 8 soak
export KAFKA_TOPIC=soak KAFKA_PARTITIONS=8 LOG_LEVEL=warn

ROLE_ARGS=()
for role in ${ROLES//,/ }; do ROLE_ARGS+=(--role "$role"); done
"$BIN" serve "${ROLE_ARGS[@]}" --command-addr 127.0.0.1:17380 --query-addr 127.0.0.1:17381 >"$WORK/chronolog.log" 2>&1 &
APP=$!
PIDS+=("$APP")
until curl -sf http://127.0.0.1:17380/health >/dev/null; do kill -0 "$APP" || die "chronolog exited: $(tail -3 "$WORK/chronolog.log")"; sleep 0.1; done
curl -sf -X POST http://127.0.0.1:17380/api/v1/timestamp >/dev/null  # the producer id

if [[ -z $RATE ]]; then
  peaks=()
  for _ in 1 2 3; do
    peaks+=("$(wrk -t2 -c128 -d5s -s loadtest/post.lua http://127.0.0.1:17380 | awk '/Requests\/sec/ {printf "%.0f", $2}')")
  done
  PEAK=$(printf '%s\n' "${peaks[@]}" | sort -n | sed -n 2p)
  RATE=$((PEAK / 2))
  log "peak ${PEAK} req/s (median of ${peaks[*]}); soaking at $RATE/s"
fi

rss_mb() { awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$APP/status"; }
# Probes only when the query role runs; one command in 1000 otherwise none.
SAMPLE=0
[[ -z $ROLES || $ROLES == *query* ]] && SAMPLE=1000
"$TOOL" e2e http://127.0.0.1:17380 http://127.0.0.1:17381 "$RATE" $((MINUTES * 60)) "$SAMPLE" >"$WORK/load.txt" &
LOAD=$!
log "RSS every 10 s (MiB):"
samples=()
while kill -0 "$LOAD" 2>/dev/null; do
  samples+=("$(rss_mb)")
  printf '%s ' "${samples[-1]}" >&2
  sleep 10
done
echo >&2
wait "$LOAD" || die "the load generator failed"
samples+=("$(rss_mb)")
LAG="n/a (no consumer role)"
if [[ -z $ROLES || $ROLES == *consumer* ]]; then
  LAG=$(curl -sf http://127.0.0.1:17380/metrics | awk '/^chronolog_consumer_lag_records\{/ {n += $2} END {printf "%d records", n}')
fi
START=${samples[6]:-${samples[0]}}  # after the first minute: warm-up excluded
END=${samples[-1]}
echo "rate $RATE/s for $MINUTES min, roles ${ROLES:-all}: $(cat "$WORK/load.txt")"
echo "RSS: after 1 min $START MiB, at the end $END MiB, ratio $(awk -v a="$END" -v b="$START" 'BEGIN {printf "%.3f", a / b}'), max $(printf '%s\n' "${samples[@]}" | sort -n | tail -1) MiB; consumer lag left: $LAG"

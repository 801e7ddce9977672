#!/usr/bin/env bash
# Runs each cargo-fuzz target briefly (FUZZ_SECONDS, default 10): the
# timestamp parser and the record decoder. cargo-fuzz needs nightly features;
# RUSTC_BOOTSTRAP lets the stable toolchain (the only one here) provide them.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$CHRONOLOG_ROOT"
# cargo-fuzz only drives cargo and libFuzzer: an unoptimised build of it will do.
command -v cargo-fuzz >/dev/null || cargo install --locked --debug cargo-fuzz --version 0.13.2
export RUSTC_BOOTSTRAP=1
FUZZ_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/chronolog/fuzz-target}"
for target in timestamp record; do
  log "fuzzing $target for ${FUZZ_SECONDS:-10} s"
  cargo fuzz run --target-dir "$FUZZ_TARGET_DIR" -O "$target" -- \
    -max_total_time="${FUZZ_SECONDS:-10}" -print_final_stats=1 2>&1 | grep -E "^(Done|stat::number_of_executed_runs)"
done

#!/usr/bin/env bash
# Runs the fuzz targets with libFuzzer for a while each and prints, per
# target, how many inputs it ran and whether it crashed.
#
#   fuzz/run.sh [SECONDS] [TARGET...]    (default: 60 s, every target)
#
# Needs a nightly toolchain (`rustup toolchain install nightly`) and a C++
# compiler for libFuzzer. New inputs that reach new code are kept in
# fuzz/corpus/TARGET/ (locally: git keeps only seed-* and crash-*); a
# crashing input is written to fuzz/artifacts/TARGET/ -- fix the bug, then
# copy it to fuzz/corpus/TARGET/crash-WHAT so the test run keeps it fixed.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-60}
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
  targets=()
  for f in fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi

host=$(rustc +nightly -vV | sed -n 's/^host: //p')
# What cargo-fuzz passes: coverage counters and comparison tracing for
# libFuzzer, and the checks of a debug build kept in an optimised one.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# --target keeps the flags off build scripts and proc macros.
cargo +nightly build --release --features libfuzzer --bins --target "$host" --target-dir target

printf '%-14s %14s %10s %s\n' target executions seconds result
status=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  log=$(mktemp)
  if "target/$host/release/$t" -max_total_time="$seconds" -print_final_stats=1 \
    -artifact_prefix="artifacts/$t/" "corpus/$t" >"$log" 2>&1; then
    result=ok
  else
    result="CRASHED: see artifacts/$t/ and $log"
    status=1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  took=$(sed -n 's/^stat::.*//; s/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
  printf '%-14s %14s %10s %s\n' "$t" "${runs:-?}" "${took:-$seconds}" "$result"
  [[ $result == ok ]] && rm -f "$log"
done
exit $status

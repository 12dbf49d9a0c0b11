#!/usr/bin/env bash
# Instructions per request of examsync and of the bare handler, for one package scenario,
# under callgrind (docs/benchmarks.md, "Where the instructions go"). Instruction counts do
# not depend on what else the machine runs, unlike requests/s.
#
#   cargo build --release --example bench_packages
#   scripts/callgrind_packages.sh 304      # or: delta
#
# Prints the two figures and leaves the profiles in $OUT (callgrind.bare, callgrind.examsync)
# for callgrind_annotate. Needs valgrind and wrk.
set -euo pipefail
scenario=${1:-304}
bin=${BENCH_BIN:-target/release/examples/bench_packages}
out=${OUT:-$(mktemp -d)}
print="$out/print.txt"
BENCH_WRK=$(command -v wrk) BENCH_WRK_PRINT=1 BENCH_QUESTIONS=${BENCH_QUESTIONS:-300} BENCH_SERVER_THREADS=1 \
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out/callgrind.out" "$bin" >"$print" 2>&1 &
for _ in $(seq 1 180); do grep -q Ctrl "$print" 2>/dev/null && break; sleep 1; done
examsync=$(grep -o "examsync: http://[0-9.:]*" "$print" | cut -d' ' -f2)
bare=$(grep -o "bare: http://[0-9.:]*" "$print" | cut -d' ' -f2)
token=$(grep -o "Bearer [^ ]*" "$print" | head -1)
case $scenario in
  304) line=$(grep "304 revalidation" "$print") ;;
  delta) line=$(grep "delta (br)" "$print") ;;
  *) echo "scenario: 304 or delta" >&2; exit 2 ;;
esac
path=$(echo "$line" | grep -o "path [^ ]*" | cut -d' ' -f2)
header=$(echo "$line" | grep -o "\-H '[^']*'" | sed "s/-H '//; s/'$//")
pid=$(pgrep -f "callgrind.*$(basename "$bin")" | head -1)
load() { wrk -t1 -c4 -d"$2" -H "Authorization: $token" -H "$header" "$1$path"; }
callgrind_control -i on "$pid" >/dev/null
load "$examsync" 3s >/dev/null; load "$bare" 3s >/dev/null   # warm both, then count from zero
callgrind_control -z "$pid" >/dev/null
n_bare=$(load "$bare" 10s | awk '/requests in/ {print $1}'); callgrind_control -d bare "$pid" >/dev/null
n_exam=$(load "$examsync" 10s | awk '/requests in/ {print $1}'); callgrind_control -d examsync "$pid" >/dev/null
kill "$pid"; wait || true
mv "$out/callgrind.out.1" "$out/callgrind.bare"; mv "$out/callgrind.out.2" "$out/callgrind.examsync"
total() { awk '/^totals:/ {print $2}' "$1"; }
echo "$scenario: bare $(( $(total "$out/callgrind.bare") / n_bare )) instructions/request ($n_bare requests)," \
  "examsync $(( $(total "$out/callgrind.examsync") / n_exam )) ($n_exam requests); profiles in $out"

#!/usr/bin/env bash
# Instructions per request of the pull that finds nothing (GET /api/v1/sync/changes with the
# cursor of the end of the feed) on PostgreSQL, under callgrind: examsync's own instructions,
# not PostgreSQL's (docs/benchmarks.md, "Pull feed"). Instruction counts do not depend on
# what else the machine runs, unlike requests/s.
#
#   cargo build --release
#   scripts/callgrind_pull.sh [postgres://postgres@127.0.0.1:5432/test]
#
# Prints the figure and leaves the profile in $OUT (callgrind.pull) for callgrind_annotate.
# Needs valgrind, wrk and psql.
set -euo pipefail
bin=$(realpath "${BENCH_BIN:-target/release/examsync}")
admin=${1:-postgres://postgres@127.0.0.1:5432/test}
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
name=examsync_callgrind_pull_$$
psql -q "$admin" -c "CREATE DATABASE $name"
trap 'psql -q "$admin" -c "DROP DATABASE IF EXISTS $name WITH (FORCE)" >/dev/null' EXIT
port=$((20000 + RANDOM % 20000))
export DATABASE_URL=${admin%/*}/$name JWT_SECRET=callgrind-pull-secret-0123456789abcdef \
  EXAMSYNC_BIND=127.0.0.1:$port RUST_LOG=warn EXAMSYNC_RATE_LIMIT_PER_MINUTE=0 \
  EXAMSYNC_ACCESS=open TOKIO_WORKER_THREADS=1
"$bin" migrate >/dev/null
user=$(python3 -c 'import uuid; print(uuid.uuid4())')
psql -q "$DATABASE_URL" -c "INSERT INTO users (id, role, created_at, acked_count, \
  duplicate_count, rejected_count, change_seq) VALUES ('$user', 'STUDENT', now(), 0, 0, 0, 7)"
token=$("$bin" token --user "$user" --role STUDENT)
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out/callgrind.out" \
  "$bin" serve >"$out/server.txt" 2>&1 &
for _ in $(seq 1 120); do
  curl -fs "http://127.0.0.1:$port/livez" >/dev/null 2>&1 && break
  sleep 1
done
base="http://127.0.0.1:$port/api/v1/sync/changes"
cursor=$(curl -fs -H "Authorization: Bearer $token" "$base" | python3 -c 'import json,sys; print(json.load(sys.stdin)["cursor"])')
pid=$(pgrep -f "callgrind.*$(basename "$bin") serve" | head -1)
load() { wrk -t1 -c16 -d"$1" -H "Authorization: Bearer $token" "$base?since=$cursor"; }
callgrind_control -i on "$pid" >/dev/null
load 3s >/dev/null   # warm, then count from zero
callgrind_control -z "$pid" >/dev/null
n=$(load 10s | awk '/requests in/ {print $1}')
callgrind_control -d pull "$pid" >/dev/null
kill "$pid"; wait || true
mv "$out/callgrind.out.1" "$out/callgrind.pull"
total=$(awk '/^totals:/ {print $2}' "$out/callgrind.pull")
echo "empty pull: examsync $(( total / n )) instructions/request ($n requests); profile in $out"

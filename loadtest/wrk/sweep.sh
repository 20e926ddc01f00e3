#!/usr/bin/env bash
# Closed-loop concurrency sweep with wrk: one fresh server pinned to CPU 0, wrk on CPU 1,
# connections 1..64, STEP seconds each; per step wrk's RESULT line (served/s, 429s, client
# p50/p99) and the server's own p99 of accepted student requests from /metrics.
# usage: loadtest/wrk/sweep.sh ARTIFACT OUT_DIR [REPO_DIR] [STEP]   (REPO_DIR: code to serve)
set -euo pipefail
artifact=$1; out=$2; repo=${3:-$PWD}; step=${4:-10}
here=$(cd "$(dirname "$0")" && pwd); py=$here/../../.venv/bin/python
mkdir -p "$out"
[ -f "$out/bodies.jsonl" ] || "$py" "$here/bodies.py" "$out/bodies.jsonl"
port=$((20000 + RANDOM % 20000))
(cd "$repo" && exec taskset -c 0 env ${SERVER_ENV:-} "$py" -c "from hlm.cli import app; app()" serve --artifact "$artifact" --port $port) > "$out/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do curl -sf localhost:$port/readyz > /dev/null && break; sleep 1; done
# warm-up
taskset -c 1 wrk -t1 -c2 -d3s -s "$here/search.lua" http://127.0.0.1:$port > /dev/null
p99() {  # server-side p99 (ms) of 200s on /v1/search for the student, from the histogram delta
  "$py" "$here/p99.py" "$1" "$2"
}
for c in ${CONNS:-1 2 4 8 16 32 64}; do
  curl -s localhost:$port/metrics > "$out/m0.txt"
  line=$(WRK_BODIES="$out/bodies.jsonl" taskset -c 1 wrk -t$(( c < 2 ? 1 : 2 )) -c$c -d${step}s --latency -s "$here/search.lua" http://127.0.0.1:$port | grep RESULT)
  curl -s localhost:$port/metrics > "$out/m1.txt"
  echo "c=$c $line server_p99_le_ms=$(p99 "$out/m0.txt" "$out/m1.txt")" | tee -a "$out/sweep.txt"
done
echo "rss_mb=$(( $(awk '/VmRSS/{print $2}' /proc/$pid/status) / 1024 ))" | tee -a "$out/sweep.txt"

#!/usr/bin/env bash
# Closed-loop concurrency sweep with wrk: one fresh server, connections 1..64, STEP seconds
# each; per step wrk's RESULT line (served/s, 429s, client p50/p99) and the server's own p99
# of the encoder's accepted searches from /metrics.
#   ENCODER=student|teacher (default student): which encoder the bodies name.
#   WORKERS=N (default 1): `hlm serve --workers N`. One worker is pinned to CPU 0 and wrk to
#   CPU 1 (the issue's set-up); with more, the workers and wrk share both cores unpinned.
# usage: loadtest/wrk/sweep.sh ARTIFACT OUT_DIR [REPO_DIR] [STEP]   (REPO_DIR: code to serve)
set -euo pipefail
artifact=$1; out=$2; repo=${3:-$PWD}; step=${4:-10}
encoder=${ENCODER:-student}; workers=${WORKERS:-1}
here=$(cd "$(dirname "$0")" && pwd); py=$here/../../.venv/bin/python
mkdir -p "$out"
bodies=$out/bodies-$encoder.jsonl
[ -f "$bodies" ] || "$py" "$here/bodies.py" "$bodies" "$encoder"
if [ "$workers" = 1 ]; then server_cpus=(taskset -c 0); wrk_cpus=(taskset -c 1); worker_flag=()
else server_cpus=(); wrk_cpus=(); worker_flag=(--workers "$workers"); fi
port=$((20000 + RANDOM % 20000))
(cd "$repo" && exec ${server_cpus[@]+"${server_cpus[@]}"} env ${SERVER_ENV:-} "$py" -c "from hlm.cli import app; app()" serve --artifact "$artifact" --port $port ${worker_flag[@]+"${worker_flag[@]}"}) > "$out/server-$encoder-w$workers.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 180); do curl -sf localhost:$port/readyz > /dev/null && break; sleep 1; done
# warm-up
WRK_BODIES=$bodies ${wrk_cpus[@]+"${wrk_cpus[@]}"} wrk -t1 -c2 -d3s -s "$here/search.lua" http://127.0.0.1:$port > /dev/null
for c in ${CONNS:-1 2 4 8 16 32 64}; do
  curl -s localhost:$port/metrics > "$out/m0.txt"
  line=$(WRK_BODIES=$bodies ${wrk_cpus[@]+"${wrk_cpus[@]}"} wrk -t$(( c < 2 ? 1 : 2 )) -c$c -d${step}s --latency -s "$here/search.lua" http://127.0.0.1:$port | grep RESULT)
  curl -s localhost:$port/metrics > "$out/m1.txt"
  echo "$encoder workers=$workers c=$c $line server_p99_le_ms=$("$py" "$here/p99.py" "$out/m0.txt" "$out/m1.txt" "$encoder") load=$(cut -d' ' -f1 /proc/loadavg)" | tee -a "$out/sweep.txt"
done
rss=0; for p in $pid $(pgrep -P $pid || true); do rss=$(( rss + $(awk '/VmRSS/{print $2}' /proc/$p/status 2>/dev/null || echo 0) )); done
echo "$encoder workers=$workers rss_mb=$(( rss / 1024 ))" | tee -a "$out/sweep.txt"

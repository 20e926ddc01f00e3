#!/usr/bin/env bash
# Closed-loop concurrency sweep, two builds side by side: both servers pinned to CPU 0 (one
# idle while the other is measured), wrk on CPU 1; for each connection count the BEFORE build
# then the AFTER build, STEP seconds each, so both see the same machine minute by minute.
# Per step: wrk's RESULT (served/s, 429s, client p50/p99) and the server's p99 bucket of
# accepted student searches (its own histogram), then each server's RSS.
# usage: loadtest/wrk/ab_sweep.sh ARTIFACT OUT_DIR BEFORE_REPO AFTER_REPO [STEP]
set -euo pipefail
artifact=$1; out=$2; before=$3; after=$4; step=${5:-8}
here=$(cd "$(dirname "$0")" && pwd); py=$here/../../.venv/bin/python
mkdir -p "$out"
bodies=$out/bodies.jsonl
[ -f "$bodies" ] || "$py" "$here/bodies.py" "$bodies"
declare -A port pid
for v in before after; do
  repo=$before; [ $v = after ] && repo=$after
  port[$v]=$((20000 + RANDOM % 20000))
  (cd "$repo" && exec taskset -c 0 "$py" -c "from hlm.cli import app; app()" serve --artifact "$artifact" --port ${port[$v]}) > "$out/server-$v.log" 2>&1 &
  pid[$v]=$!
done
trap 'kill ${pid[before]} ${pid[after]} 2>/dev/null || true' EXIT
for v in before after; do
  for _ in $(seq 1 180); do curl -sf localhost:${port[$v]}/readyz > /dev/null && break; sleep 1; done
  WRK_BODIES=$bodies taskset -c 1 wrk -t1 -c2 -d3s -s "$here/search.lua" http://127.0.0.1:${port[$v]} > /dev/null
done
p99() {  # server-side p99 (ms) of 200s on /v1/search for the student, from the histogram delta
  "$py" "$here/p99.py" "$1" "$2"
}
for c in ${CONNS:-1 2 4 8 16 32 64}; do
  for v in before after; do
    curl -s localhost:${port[$v]}/metrics > "$out/m0.txt"
    line=$(WRK_BODIES=$bodies taskset -c 1 wrk -t$(( c < 2 ? 1 : 2 )) -c$c -d${step}s -s "$here/search.lua" http://127.0.0.1:${port[$v]} | grep RESULT)
    curl -s localhost:${port[$v]}/metrics > "$out/m1.txt"
    echo "$v c=$c $line server_p99_le_ms=$(p99 "$out/m0.txt" "$out/m1.txt") load=$(cut -d' ' -f1 /proc/loadavg)" | tee -a "$out/sweep.txt"
  done
done
for v in before after; do echo "$v rss_mb=$(( $(awk '/VmRSS/{print $2}' /proc/${pid[$v]}/status) / 1024 ))" | tee -a "$out/sweep.txt"; done

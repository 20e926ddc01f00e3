#!/usr/bin/env bash
# Closed-loop concurrency sweep, several servers side by side: every server pinned to CPU 0
# (idle while another is measured), wrk on CPU 1; for each connection count each side in
# turn, STEP seconds each, so all see the same machine minute by minute.
# A side is NAME=REPO (`hlm serve` run from that checkout) or `floor` (loadtest/floor.py: the
# bare ASGI app doing only the product's work, issue #29's reference).
# Per step: wrk's RESULT (served/s, 429s, client p50/p99) and, for hlm sides, the server's p99
# bucket of accepted student searches (its own histogram); then each server's RSS.
# usage: loadtest/wrk/ab_sweep.sh ARTIFACT OUT_DIR SIDE [SIDE ...]
#   e.g. ab_sweep.sh artifacts/demo runs/ab floor before=/tmp/before after=.
#   STEP (seconds, default 8), CONNS (default "1 2 4 8 16 32 64"), SERVER_ENV (env for hlm sides).
set -euo pipefail
artifact=$(realpath "$1"); out=$2; shift 2
step=${STEP:-8}
here=$(cd "$(dirname "$0")" && pwd); py=$here/../../.venv/bin/python; root=$(cd "$here/../.." && pwd)
mkdir -p "$out"
bodies=$out/bodies.jsonl
[ -f "$bodies" ] || "$py" "$here/bodies.py" "$bodies"
declare -A port pid
names=()
for side in "$@"; do
  name=${side%%=*}; names+=("$name")
  port[$name]=$((20000 + RANDOM % 20000))
  if [ "$side" = floor ]; then
    (cd "$root" && exec taskset -c 0 "$py" -m loadtest floor --artifact "$artifact" --port ${port[$name]}) > "$out/server-$name.log" 2>&1 &
  else
    repo=${side#*=}
    (cd "$repo" && exec taskset -c 0 env ${SERVER_ENV:-} "$py" -c "from hlm.cli import app; app()" serve --artifact "$artifact" --port ${port[$name]}) > "$out/server-$name.log" 2>&1 &
  fi
  pid[$name]=$!
done
cleanup() { for n in "${names[@]}"; do kill "${pid[$n]}" 2>/dev/null || true; done; }
trap cleanup EXIT
for n in "${names[@]}"; do
  for _ in $(seq 1 300); do curl -sf localhost:${port[$n]}/readyz > /dev/null && break; sleep 1; done
  WRK_BODIES=$bodies taskset -c 1 wrk -t1 -c2 -d3s -s "$here/search.lua" http://127.0.0.1:${port[$n]} > /dev/null
done
for c in ${CONNS:-1 2 4 8 16 32 64}; do
  for n in "${names[@]}"; do
    p99=-
    [ "$n" = floor ] || curl -s localhost:${port[$n]}/metrics > "$out/m0.txt"
    line=$(WRK_BODIES=$bodies taskset -c 1 wrk -t$(( c < 2 ? 1 : 2 )) -c$c -d${step}s -s "$here/search.lua" http://127.0.0.1:${port[$n]} | grep RESULT)
    if [ "$n" != floor ]; then
      curl -s localhost:${port[$n]}/metrics > "$out/m1.txt"
      p99=$("$py" "$here/p99.py" "$out/m0.txt" "$out/m1.txt")
    fi
    echo "$n c=$c $line server_p99_le_ms=$p99 load=$(cut -d' ' -f1 /proc/loadavg)" | tee -a "$out/sweep.txt"
  done
done
for n in "${names[@]}"; do echo "$n rss_mb=$(( $(awk '/VmRSS/{print $2}' /proc/${pid[$n]}/status) / 1024 ))" | tee -a "$out/sweep.txt"; done

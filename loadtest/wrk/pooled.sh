#!/usr/bin/env bash
# Issue #29's pooled open-loop caller against one `hlm serve` per side: one address, a pool of
# POOL keep-alive connections, requests at RATE/s (constant arrivals, never retried, 5 s
# timeout), the server on CPU 0 and the generator on CPU 1; per side the harness's line
# (served, refused, errors, client p50/p99 of all answers, 200 and 429 alike).
# usage: loadtest/wrk/pooled.sh ARTIFACT OUT_DIR RATE SIDE [SIDE ...]   (SIDE: NAME=REPO)
#   POOL (default 32), SECS (default 10)
set -euo pipefail
artifact=$(realpath "$1"); out=$2; rate=$3; shift 3
pool=${POOL:-32}; secs=${SECS:-10}
here=$(cd "$(dirname "$0")" && pwd); py=$here/../../.venv/bin/python; root=$(cd "$here/../.." && pwd)
mkdir -p "$out"
bodies=$out/bodies.jsonl
[ -f "$bodies" ] || "$py" "$here/bodies.py" "$bodies"
for side in "$@"; do
  name=${side%%=*}; repo=${side#*=}; port=$((20000 + RANDOM % 20000))
  (cd "$repo" && exec taskset -c 0 "$py" -c "from hlm.cli import app; app()" serve --artifact "$artifact" --port $port) > "$out/server-$name.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 300); do curl -sf localhost:$port/readyz > /dev/null && break; sleep 1; done
  WRK_BODIES=$bodies taskset -c 1 wrk -t1 -c2 -d3s -s "$here/search.lua" http://127.0.0.1:$port > /dev/null
  (cd "$root" && taskset -c 1 "$py" -m loadtest run --url http://127.0.0.1:$port --rate "$rate" --duration "$secs" \
      --connections "$pool" --timeout 5 --json "$out/pooled-$name.json") | sed "s/^/$name pooled: /" | tee -a "$out/pooled.txt"
  kill $pid; wait $pid 2>/dev/null || true
done

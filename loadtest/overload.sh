#!/usr/bin/env bash
# The overload benchmark of docs/RELIABILITY.md: the student at a sustainable rate, at 3x
# that for 20 s, and right after, once per admission budget (same artifact, one run).
# Server on CPU 0, generator on CPU 1, 127.0.0.1 only. Other HLM_* settings pass through
# from the environment (e.g. HLM_LOOP_LAG_ADMISSION=true).
#   loadtest/overload.sh [artifact] [sustainable rps] [budget ms ...]   (default: demo 320 50 10)
set -euo pipefail
cd "$(dirname "$0")/.."
artifact="${1:-artifacts/demo}"
rate="${2:-320}"
shift 2 || true
budgets=("${@:-50 10}")
read -r -a budgets <<< "${budgets[*]}"
out="${OVERLOAD_OUT:-runs/overload}"  # where the JSON results and server logs go
mkdir -p "$out"
port=8793
for budget in "${budgets[@]}"; do
  HLM_MAX_QUEUE_WAIT_MS=$budget taskset -c 0 .venv/bin/hlm serve --artifact "$artifact" --port $port \
    > "$out/server-budget-$budget.log" 2>&1 &
  server=$!
  for _ in $(seq 1 120); do sleep 1; curl -sf "localhost:$port/readyz" > /dev/null && break; done
  for step in "sustainable $rate 10" "overload $((rate * 3)) 20" "after $rate 10"; do
    read -r name offered seconds <<< "$step"
    echo "== budget $budget ms, $name: $offered/s for $seconds s"
    .venv/bin/python -m loadtest run --url "http://127.0.0.1:$port" --encoder student --rate "$offered" \
      --duration "$seconds" --warmup 1 --generator-cpus 1 --json "$out/budget-$budget-$name.json"
  done
  echo "server rss_kb $(awk '/VmRSS/{print $2}' "/proc/$server/status")"  # taskset execs: $server is hlm
  kill "$server"; wait "$server" || true
done

#!/usr/bin/env bash
# The 10-minute soak of docs/RELIABILITY.md: the student at ~70% of its sustainable rate,
# ten 58-s open-loop steps on 127.0.0.1, server RSS read before each minute.
cd "$(dirname "$0")/.." && mkdir -p runs/soak
taskset -c 0 .venv/bin/hlm serve --artifact artifacts/demo --port 8791 > runs/soak-server.log 2>&1 &
SPID=$!
for i in $(seq 1 60); do sleep 1; curl -sf localhost:8791/readyz >/dev/null && break; done
PID=$(pgrep -f "hlm serve --artifact artifacts/demo --port 8791" | head -1)
echo "server pid $PID"
for i in $(seq 1 10); do
  RSS=$(awk '/VmRSS/{print $2}' /proc/$PID/status)
  .venv/bin/python -m loadtest run --url http://127.0.0.1:8791 --encoder student --rate 224 --duration 58 --warmup 2 --generator-cpus 1 --json runs/soak/step$i.json > runs/soak/step$i.log 2>&1
  echo "minute $i rss_kb_before $RSS $(grep -o 'p50.*' runs/soak/step$i.log | head -1)"
done
echo "rss_kb_end $(awk '/VmRSS/{print $2}' /proc/$PID/status)"
kill $SPID; wait

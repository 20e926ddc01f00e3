#!/bin/bash
# Does the Milvus backend start on an artifact, and how long do the push and the start take?
# (issue #24; docs/BENCHMARKS.md session 10.) Embedded milvus-lite in a scratch folder; port 8094.
#   scripts/milvus_start.sh artifacts/full /tmp/mfull > runs/milvus-full.log 2>&1
set -u
artifact=${1:?artifact folder}
work=${2:-/tmp/milvus-start}
cd "$(dirname "$0")/.."
rm -rf "$work"; mkdir -p "$work"
echo "push start $(date -u +%T)"
/usr/bin/time -v .venv/bin/hlm index push "$artifact" --uri "$work/keywords.db" 2>&1 | tail -40
echo "push end $(date -u +%T)"
HLM_ARTIFACT_DIR="$artifact" HLM_INDEX_BACKEND=milvus HLM_MILVUS_URI="$work/keywords.db" \
  .venv/bin/hlm serve --port 8094 > "$work/serve.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null' EXIT
for i in $(seq 1 1900); do  # the service waits up to HLM_MILVUS_LOAD_TIMEOUT_S (1800 s) for the load
  if curl -sf 127.0.0.1:8094/readyz > /dev/null; then echo "ready after ${i}s $(date -u +%T)"; break; fi
  if ! kill -0 $pid 2>/dev/null; then echo "serve exited"; break; fi
  sleep 1
done
for q in "cordless drill" "garden hose" "led light bulbs"; do
  curl -s -XPOST 127.0.0.1:8094/v1/search -H 'content-type: application/json' -d "{\"query\":\"$q\",\"k\":3}" | head -c 500; echo
done
grep VmRSS /proc/$pid/status
kill $pid; wait $pid
tail -30 "$work/serve.log"

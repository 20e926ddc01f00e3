#!/usr/bin/env bash
# Interleaved 3x open-loop A/B: two builds up at once (CPU 0), 600/s (3x the 200/s both sustain
# on the loaded 2-core VM) for 10 s each, alternating, loadtest harness on CPU 1.
# usage: BEFORE=/path/to/other/tree [AFTER=tree] [ARTIFACT=folder] [RATE=600] loadtest/wrk/overload_ab.sh
# (RATE: the offered rate, 3x what both sustain; a third of it warms each server up)
cd "$(dirname "$0")/../.."
here=$PWD
artifact=${ARTIFACT:-$here/artifacts/demo-before}
declare -A port pid
for v in before after; do
  repo=${AFTER:-$here}; [ $v = before ] && repo=${BEFORE:?BEFORE=tree to compare}
  port[$v]=$((21000 + RANDOM % 9000))
  (cd $repo && exec env $EXTRA taskset -c 0 "$here/.venv/bin/python" -c "from hlm.cli import app; app()" serve --artifact "$artifact" --port ${port[$v]}) > /tmp/ovab-$v.log 2>&1 &
  pid[$v]=$!
done
for v in before after; do for _ in $(seq 1 120); do sleep 1; curl -sf "localhost:${port[$v]}/readyz" > /dev/null && break; done; done
for v in before after; do .venv/bin/python -m loadtest run --url "http://127.0.0.1:${port[$v]}" --encoder student --rate $(( ${RATE:-600} / 3 )) --duration 3 --warmup 1 --generator-cpus 1 > /dev/null 2>&1; done
for round in 1 2; do for v in before after; do
  r=$(.venv/bin/python -m loadtest run --url "http://127.0.0.1:${port[$v]}" --encoder student --rate ${RATE:-600} --duration 10 --warmup 1 --generator-cpus 1 --json /tmp/ovab-$v-$round.json 2>&1 | grep "server:")
  echo "$v round $round: $r load $(cut -d' ' -f1 /proc/loadavg)"
done; done
kill ${pid[before]} ${pid[after]}

#!/usr/bin/env bash
# The objective side of the student study (issue #8): mpnet-l2 against the packaged teacher,
# every variant 300 steps of 64 in all (as in scripts/student_study.sh, whose mpnet-l2 row is
# the reference: phase 3 with InfoNCE + L2 + ranking KL), one `hlm eval` at the end.
#   scripts/objective_study.sh [threads]
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${1:-1}"
hlm=.venv/bin/hlm
root=runs/objectives
common=(--student mpnet-l2 --lr3 1e-4 --minutes2 120 --minutes3 120 --threads "$threads")
"$hlm" distill "${common[@]}" --phases 3 --out "$root/no-kl" --steps3 300 --l2-share 1.0 --kl3 0
"$hlm" distill "${common[@]}" --phases 3 --out "$root/no-l2" --steps3 300 --l2-share 0 --kl3 1.0
"$hlm" distill "${common[@]}" --phases 2,3 --out "$root/l2-then-p3" --steps2 150 --steps3 150 --l2-share 1.0 --kl3 1.0
args=()
for variant in no-kl no-l2 l2-then-p3; do
  "$hlm" export-student "$root/$variant/phase3" --out "runs/onnx/objective-$variant"
  args+=(--onnx-dir "runs/onnx/objective-$variant")  # rows named by folder (checkpoint rows would collide)
done
"$hlm" eval "${args[@]}" --out runs/eval/objectives --threads "$threads"

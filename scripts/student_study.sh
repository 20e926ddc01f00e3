#!/usr/bin/env bash
# The student design study (issue #8) with equal budgets, in one run: every architecture
# gets the same phase-3 recipe (InfoNCE + L2 + ranking KL against the packaged teacher's
# frozen title vectors) and the same number of steps (equal examples seen; wall time is
# reported by each checkpoint, since a shared machine makes wall-clock budgets unequal),
# then each is exported (fp32 + int8) and all are scored by one `hlm eval`.
#   scripts/student_study.sh [steps] [threads]     (default 300 steps, 1 thread)
# Latency for the frontier comes from a separate quiet-machine `hlm bench-encoders` run.
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${1:-300}"
threads="${2:-1}"
hlm=.venv/bin/hlm
root=runs/study
args=()
for student in minilm-l3 minilm-l6 mpnet-l2 mpnet-l3 mpnet-l4; do
  # Learning rates from the earlier rounds (docs/RESULTS.md): 2e-4 lifted the projected
  # MiniLM students, 1e-4 suited the cut ones.
  case "$student" in minilm-*) lr=2e-4 ;; *) lr=1e-4 ;; esac
  "$hlm" distill --student "$student" --phases 3 --out "$root/$student" --steps3 "$steps" --minutes3 120 \
    --lr3 "$lr" --l2-share 1.0 --kl3 1.0 --threads "$threads"
  "$hlm" export-student "$root/$student/phase3" --out "runs/onnx/study-$student"
  args+=("$root/$student/phase3" --onnx-dir "runs/onnx/study-$student")
done
"$hlm" eval "${args[@]}" --out runs/eval/study --threads "$threads"

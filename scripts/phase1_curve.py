"""Phase 1 as a curve (issue #27): one fine-tune of the teacher, judged at several steps.

    .venv/bin/python scripts/phase1_curve.py --name hn1 --steps 560 --snapshots 140,280 --hard-negatives 1

Trains (or resumes) ``.cache/distill/curve-<name>`` with copies of the model kept at the
snapshot steps, then scores each copy and the final model with the build's own adoption
check (``models.distill.phase1.judge``: every dev query's judged products plus 6,000 other
titles, nDCG@10 and R@100 against the packaged teacher). Results, one row per step, go to
``runs/phase1-curve/<name>.json``. Resumable at every stage: the fine-tune from its
checkpoints, the judging from its saved verdicts and the embedding cache.

Note: the snapshots of one run share its learning-rate schedule (linear decay to --steps),
so a snapshot at step s is not the model a run of s steps would give (its rate has not
decayed); the final row is.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from models.distill.phase1 import Phase1Config, finetune_teacher, judge, snapshot_folder
from models.model_files import CACHE_DIR


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--steps", type=int, default=560)
    ap.add_argument("--snapshots", default="", help="comma-separated steps to judge besides the last")
    ap.add_argument("--hard-negatives", type=int, default=0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--other-titles", type=int, default=6000)
    args = ap.parse_args()
    snapshots = tuple(int(s) for s in args.snapshots.split(",") if s)
    out = CACHE_DIR / "distill" / f"curve-{args.name}"
    config = Phase1Config(out=str(out), lr=args.lr, batch_size=args.batch, max_steps=args.steps, minutes=100_000.0,
                          threads=args.threads, hard_negatives=args.hard_negatives, snapshot_at=snapshots)
    started = time.time()
    final = finetune_teacher(config)
    train_s = json.loads((out / "info.json").read_text())["elapsed_s"]
    rows = []
    for step in (*snapshots, args.steps):
        folder = final if step == args.steps else snapshot_folder(out, step) / "model"
        verdict = judge(folder, args.threads, args.other_titles)
        row = {"step": step, "ndcg_at_10": verdict["finetuned"]["ndcg_at_10"],
               "recall_at_100": verdict["finetuned"].get("recall_at_100"),
               "packaged_ndcg_at_10": verdict["original"]["ndcg_at_10"], "ratio": verdict["ratio"],
               "queries": verdict["queries"], "titles": verdict["titles"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"name": args.name, "config": {k: v for k, v in vars(args).items()}, "train_s": train_s,
              "wall_s": round(time.time() - started, 1), "rows": rows, "model": str(final)}
    path = Path("runs/phase1-curve") / f"{args.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(path)


if __name__ == "__main__":
    main()

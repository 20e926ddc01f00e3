"""The student design study's frontier: quality ratio against speed ratio, as a table and a plot.

Inputs are files other commands already write: ``hlm eval`` (eval.json: dev nDCG@10 and
ratios per model) and ``hlm bench-encoders --out`` (latency per encoder, same run).
``--pair eval_row=bench_row`` ties a model's quality row to its latency row.

    python -m models.eval.frontier --eval runs/eval/x/eval.json --bench runs/bench/enc.json \\
        --pair "minilm-l6/phase3=l6_int8" --out docs/frontier.png

Or ``--points FILE``: rows already paired (a JSON list of ``{"model", "encoder", "ndcg_at_10",
"ndcg_ratio", "batch1_ms", "speedup"}``), for a frontier whose eval and bench files are gone
but whose figures a results table keeps (``docs/frontier-session4.json`` says where each
figure comes from).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def frontier_rows(evaluation: dict, bench: dict, pairs: dict[str, str]) -> list[dict]:
    rows = []
    teacher_ms = bench["rows"]["teacher_fp32"]["batch1_median_ms"]
    for eval_name, bench_name in pairs.items():
        quality = evaluation["rows"][eval_name]
        speed = bench["rows"][bench_name]
        rows.append({
            "model": eval_name,
            "encoder": bench_name,
            "ndcg_at_10": quality["ndcg_at_10"],
            "ndcg_ratio": quality.get("ndcg_at_10_ratio"),
            "recall_at_100_ratio": quality.get("recall_at_100_ratio"),
            "overlap_at_10": quality.get("overlap_at_10"),
            "batch1_ms": speed["batch1_median_ms"],
            "speedup": teacher_ms / speed["batch1_median_ms"],
        })
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| student | encoder | dev nDCG@10 | × teacher | R@100 × teacher | overlap@10 | batch-1 ms | × faster |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        def fmt(v, spec):
            return format(v, spec) if isinstance(v, (int, float)) else "–"
        lines.append(f"| {r['model']} | {r['encoder']} | {fmt(r['ndcg_at_10'], '.4f')} | {fmt(r['ndcg_ratio'], '.3f')} "
                     f"| {fmt(r.get('recall_at_100_ratio'), '.3f')} | {fmt(r.get('overlap_at_10'), '.3f')} "
                     f"| {fmt(r['batch1_ms'], '.2f')} | {fmt(r['speedup'], '.1f')} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, gate: float = 0.98) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    if max(r["speedup"] for r in rows) > 30:  # the static student is ~100x: a linear axis crushes the rest
        ax.set_xscale("log")
    for r in rows:
        ax.scatter(r["speedup"], r["ndcg_ratio"], s=40)
        ax.annotate(r["encoder"], (r["speedup"], r["ndcg_ratio"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    ax.axhline(gate, color="grey", linestyle="--", linewidth=1)
    ax.text(ax.get_xlim()[0], gate, f" gate {gate:.2f}", va="bottom", fontsize=8, color="grey")
    ax.axhline(1.0, color="black", linewidth=0.5)
    ax.set_xlabel("batch-1 encoder speed-up over the teacher (×)")
    ax.set_ylabel("dev nDCG@10 / teacher's")
    ax.set_title("Student frontier: quality kept against speed gained")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval", type=Path, action="append", default=[],
                        help="eval.json from `hlm eval` (repeatable; rows are merged, same teacher)")
    parser.add_argument("--bench", type=Path)
    parser.add_argument("--pair", action="append", default=[], help="eval_row=bench_row")
    parser.add_argument("--points", type=Path, help="rows already paired (JSON; instead of --eval/--bench/--pair)")
    parser.add_argument("--out", type=Path, required=True, help="PNG path")
    args = parser.parse_args()
    if args.points:
        document = json.loads(args.points.read_text())
        rows = document["rows"] if isinstance(document, dict) else document
    else:
        if not (args.eval and args.bench and args.pair):
            parser.error("give --points, or --eval, --bench and --pair")
        pairs = dict(p.split("=", 1) for p in args.pair)
        merged = {"rows": {}}
        for path in args.eval:
            merged["rows"].update(json.loads(path.read_text())["rows"])
        rows = frontier_rows(merged, json.loads(args.bench.read_text()), pairs)
    plot(rows, args.out)
    print(markdown(rows))


if __name__ == "__main__":
    main()

"""Encoder-alone benchmark: batch-1 latency and batch-32 throughput, side by side.

Every encoder sees the same real queries, and the encoders take turns query by query
(round robin), so drift of a noisy shared machine hits all of them alike; only medians
and ratios to the teacher are meant to be quoted.

    python -m benchmarks.encoder_bench artifacts/demo [--extra name=path/to/model.onnx:tokenizer.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from retrieval.onnx_encoder import OnnxEncoder


def _queries(n: int) -> list[str]:
    from models.data import load_sample
    from models.splits import split_of

    texts = load_sample("msmarco").texts + load_sample("topics", 5000).texts
    return [t for t in texts if split_of(t) == "dev"][:n]


def encoders_of(artifact: Path, threads: int) -> dict[str, OnnxEncoder]:
    from artifact.manifest import verify

    manifest = verify(artifact, checksums=False)
    out = {}
    for name in ("teacher", "student"):
        enc = manifest["encoders"][name]
        out[f"{name}_fp32"] = OnnxEncoder(artifact / enc["onnx"], artifact / enc["tokenizer"], enc["max_length"], threads)
        if enc.get("onnx_int8"):
            out[f"{name}_int8"] = OnnxEncoder(artifact / enc["onnx_int8"], artifact / enc["tokenizer"], enc["max_length"], threads)
    return out


def bench(encoders: dict[str, OnnxEncoder], queries: list[str], batch: int = 32, rounds: int = 5) -> dict:
    for enc in encoders.values():  # warm-up
        for q in queries[:10]:
            enc.encode([q])
    single = {name: [] for name in encoders}
    for q in queries:
        for name, enc in encoders.items():
            start = time.perf_counter()
            enc.encode([q])
            single[name].append(time.perf_counter() - start)
    batched = {name: [] for name in encoders}
    for r in range(rounds):
        chunk = queries[(r * batch) % len(queries):][:batch]
        for name, enc in encoders.items():
            start = time.perf_counter()
            enc.encode(chunk)
            batched[name].append(len(chunk) / (time.perf_counter() - start))
    rows = {}
    for name in encoders:
        lat = np.array(single[name]) * 1000
        rows[name] = {
            "batch1_median_ms": float(np.median(lat)),
            "batch1_p99_ms": float(np.percentile(lat, 99)),
            "batch32_texts_per_s": float(statistics.median(batched[name])),
        }
    ref = rows.get("teacher_fp32")
    if ref:
        for row in rows.values():
            row["speedup_batch1_vs_teacher"] = ref["batch1_median_ms"] / row["batch1_median_ms"]
            row["throughput_batch32_vs_teacher"] = row["batch32_texts_per_s"] / ref["batch32_texts_per_s"]
    return rows


CURVE_SIZES = (1, 2, 4, 8, 16, 32)


def batch_curve(encoders: dict[str, OnnxEncoder], queries: list[str], sizes=CURVE_SIZES, rounds: int = 20) -> dict:
    """Median cost of one batch of ``n`` real queries, for each n, encoders taking turns.

    What the service's ``max_batch`` and ``max_wait`` are chosen from: where the cost per
    query stops falling, a bigger batch only makes its first query wait longer."""
    curve = {name: {} for name in encoders}
    for n in sizes:
        times = {name: [] for name in encoders}
        for r in range(rounds):
            chunk = [queries[(r * n + i) % len(queries)] for i in range(n)]
            for name, enc in encoders.items():
                start = time.perf_counter()
                enc.encode(chunk)
                times[name].append(time.perf_counter() - start)
        for name in encoders:
            batch_ms = float(np.median(times[name]) * 1000)
            curve[name][n] = {"batch_ms": batch_ms, "per_query_ms": batch_ms / n}
    return curve


def curve_markdown(curve: dict) -> str:
    sizes = sorted({n for rows in curve.values() for n in rows})
    lines = ["| encoder | " + " | ".join(f"batch {n}: ms (ms/query)" for n in sizes) + " |",
             "|---|" + "---|" * len(sizes)]
    for name, rows in curve.items():
        lines.append(f"| {name} | " + " | ".join(
            f"{rows[n]['batch_ms']:.3f} ({rows[n]['per_query_ms']:.3f})" for n in sizes) + " |")
    return "\n".join(lines)


def markdown(rows: dict) -> str:
    lines = ["| encoder | batch-1 median ms | batch-1 p99 ms | × faster than teacher | batch-32 texts/s | × teacher |",
             "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['batch1_median_ms']:.2f} | {r['batch1_p99_ms']:.2f} | {r.get('speedup_batch1_vs_teacher', 0):.1f} "
            f"| {r['batch32_texts_per_s']:.0f} | {r.get('throughput_batch32_vs_teacher', 0):.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--extra", action="append", default=[], help="name=model.onnx:tokenizer.json")
    parser.add_argument("--out", type=Path, default=None, help="write JSON here")
    parser.add_argument("--curve", action="store_true", help="also the batch cost curve (batches of 1-32 queries)")
    args = parser.parse_args(argv)
    encoders = encoders_of(args.artifact, args.threads)
    for spec in args.extra:
        name, paths = spec.split("=", 1)
        model, tok = paths.split(":", 1)
        encoders[name] = OnnxEncoder(model, tok, 128, args.threads)
    queries = _queries(args.queries)
    rows = bench(encoders, queries)
    curve = batch_curve(encoders, queries) if args.curve else None
    meta = {"machine": platform.node(), "cpus": os.cpu_count(), "processor": platform.processor(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "queries": len(queries),
            "threads": args.threads, "artifact": str(args.artifact)}
    print(json.dumps(meta))
    print(markdown(rows))
    if curve:
        print(curve_markdown(curve))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "rows": rows, "curve": curve}, indent=2))


if __name__ == "__main__":
    main()

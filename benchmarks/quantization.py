"""Dynamic vs static (calibrated) int8 for an artifact's transformer student (issue #14).

For the artifact's fp32 student: the dynamic int8 copy it ships and a static int8 copy
calibrated on train-split queries, scored the same way in one run: dev nDCG@10 on the build's
gate set (judged dev queries over the artifact's product titles, teacher vectors, exact
search), mean cosine to fp32, the share of dev queries whose top-10 over the artifact's
keywords is identical alone and inside mixed batches, and batch-1 / batch-16 latency.

    .venv/bin/python -m benchmarks.quantization artifacts/demo-before --out runs/bench/quantization.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from artifact.manifest import verify
from artifact.store import read_store
from retrieval.exact import exact_top_k
from retrieval.onnx_encoder import OnnxEncoder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--calibration", type=int, default=300, help="train-split queries to calibrate on")
    parser.add_argument("--queries", type=int, default=400, help="judged dev queries scored")
    parser.add_argument("--method", action="append", default=None, choices=["minmax", "percentile", "entropy"],
                        help="calibration method(s) of the static copies (default minmax)")
    parser.add_argument("--activation-output-fp32", action="store_true",
                        help="also a copy per method whose MatMuls reading the FFN activation (GELU) stay fp32")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    from models import data as data_mod
    from models.distill.prepare import train_queries
    from models.distill.teacher_vectors import TeacherVectors
    from models.eval.judged import JudgedEval, judged_queries
    from models.export import quantize_int8_static

    root = args.artifact
    manifest = verify(root, checksums=False)
    spec = manifest["encoders"]["student"]
    tok = root / spec["tokenizer"]
    judged_train, web_train = train_queries()
    calibration = [q for pair in zip(judged_train, web_train) for q in pair][: args.calibration]
    with tempfile.TemporaryDirectory() as tmp:
        encoders = {
            "fp32": OnnxEncoder(root / spec["onnx"], tok),
            "int8_dynamic": OnnxEncoder(root / spec["onnx_int8"], tok),
        }
        t0 = time.perf_counter()
        for method in args.method or ["minmax"]:
            static_path = Path(tmp) / f"model.int8-static-{method}.onnx"
            quantize_int8_static(root / spec["onnx"], static_path, tok, calibration, method)
            encoders[f"int8_static_{method}"] = OnnxEncoder(static_path, tok)
            if args.activation_output_fp32:
                kept = Path(tmp) / f"model.int8-static-{method}-gelu-fp32.onnx"
                quantize_int8_static(root / spec["onnx"], kept, tok, calibration, method, activation_output_fp32=True)
                encoders[f"int8_static_{method}_gelu_out_fp32"] = OnnxEncoder(kept, tok)
        calib_s = time.perf_counter() - t0
        rows = _score(encoders, root, manifest, args.queries, TeacherVectors(1), data_mod, JudgedEval, judged_queries)
    meta = {"machine": platform.node(), "processor": platform.processor(), "artifact": str(root),
            "calibration_queries": len(calibration), "calibration_s": round(calib_s, 1)}
    print(json.dumps(meta))
    print("| student | dev nDCG@10 | × teacher | cosine to fp32 | top-10 same alone and batched | batch-1 ms | batch-16 ms/query |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['ndcg_at_10']:.4f} | {r['share_of_teacher']:.3f} | {r['cosine_to_fp32']:.4f} | "
              f"{r['batch_invariant_top10']:.4f} | {r['batch1_ms']:.2f} | {r['batch16_ms_per_query']:.3f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


def _score(encoders, root, manifest, limit, teacher, data_mod, JudgedEval, judged_queries) -> dict:
    products = data_mod.load_sample("products")
    title_of = dict(zip(products.ids, products.texts))
    queries, judgments = judged_queries(products.ids, "dev", limit)
    ids, texts = read_store(root / manifest["index"]["store"])
    pool = list(dict.fromkeys([i[3:] for i in ids if i.startswith("hd:")] + [d for g in judgments for d in g]))
    scored = JudgedEval(queries, judgments, pool, teacher([title_of[d] for d in pool], "gate products"))
    teacher_ndcg = scored.score(lambda q: teacher(list(q), "gate queries"))["ndcg_at_10"]
    keywords = teacher(texts, "keywords")
    fp32 = encoders["fp32"].encode_many(queries)
    rng = np.random.default_rng(0)
    rows = {}
    for name, enc in encoders.items():
        alone = np.vstack([enc.encode([q]).vectors for q in queries])
        # The same queries in shuffled batches of 16: what the service's batcher would form.
        order = rng.permutation(len(queries))
        batched = np.empty_like(alone)
        for start in range(0, len(order), 16):
            chunk = order[start : start + 16]
            batched[chunk] = enc.encode([queries[i] for i in chunk]).vectors
        same = (exact_top_k(keywords, alone, 10) == exact_top_k(keywords, batched, 10)).all(axis=1).mean()
        single = []
        for q in queries[:200]:
            t0 = time.perf_counter()
            enc.encode([q])
            single.append(time.perf_counter() - t0)
        per16 = []
        for start in range(0, 160, 16):
            t0 = time.perf_counter()
            enc.encode(queries[start : start + 16])
            per16.append((time.perf_counter() - t0) / 16)
        ndcg = scored.score(lambda q, enc=enc: np.vstack([enc.encode([t]).vectors for t in q]))["ndcg_at_10"]
        rows[name] = {
            "ndcg_at_10": ndcg, "share_of_teacher": ndcg / teacher_ndcg, "teacher_ndcg_at_10": teacher_ndcg,
            "cosine_to_fp32": float((alone * fp32).sum(axis=1).mean()), "batch_invariant_top10": float(same),
            "batch1_ms": statistics.median(single) * 1000, "batch16_ms_per_query": statistics.median(per16) * 1000,
        }
    return rows


if __name__ == "__main__":
    main()

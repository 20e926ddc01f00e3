"""A lexical signal beside the dense one (issue #27): BM25 over the keywords, fused with the
student's dense hits, on judged Home Depot queries.

    .venv/bin/python scripts/lexical_fusion.py --artifact artifacts/full --out runs/lexical/full.json

Pool: the artifact's product keywords (``hd:*``: the titles its index holds), so every
ranking below ranks the same titles. Rankings, per judged query:

- dense: the artifact's student (ONNX, fp32: what is served) against the teacher's keyword
  vectors read from its index, exact search;
- BM25: ``bm25s`` over the same titles (English stop words, no stemming), the top 100;
- RRF: reciprocal rank fusion of the two top-100 lists (k = 60);
- linear: ``alpha * dense + (1 - alpha) * bm25``, each min-max scaled over the query's union
  of both top-100s; alpha chosen on the judged TRAIN queries, reported on dev.

nDCG@10 (gain = relevance - 1, unjudged = 0) on the dev split (never trained on), the train
split for alpha only; the BM25 query time (one query, one thread) is reported too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from artifact.manifest import verify
from models.eval.judged import judged_queries
from models.eval.metrics import mean_defined, ndcg_at_k
from retrieval.exact import exact_top_k

TOP = 100


def min_max(scores: dict[int, float]) -> dict[int, float]:
    if not scores:
        return {}
    lo, hi = min(scores.values()), max(scores.values())
    return {i: (s - lo) / (hi - lo) if hi > lo else 1.0 for i, s in scores.items()}


def main() -> None:
    import bm25s

    from retrieval.hnsw import HnswIndex
    from retrieval.onnx_encoder import OnnxEncoder
    from artifact.store import read_store

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artifact", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("runs/lexical/fusion.json"))
    args = ap.parse_args()
    manifest = verify(args.artifact, checksums=False)
    idx = manifest["index"]
    ids, texts = read_store(args.artifact / idx["store"])
    rows = [i for i, k in enumerate(ids) if k.startswith("hd:")]
    pool_ids = [ids[i][3:] for i in rows]
    pool_texts = [texts[i] for i in rows]
    index = HnswIndex(args.artifact / idx["path"], args.artifact / idx["store"], int(idx["dim"]), 64)
    pool_vectors = index.vectors_of([ids[i] for i in rows])
    student = manifest["encoders"]["student"]
    encoder = OnnxEncoder(args.artifact / student["onnx"], args.artifact / student["tokenizer"],
                          int(student.get("max_length") or 128), threads=2)

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(pool_texts, stopwords="en", show_progress=False), show_progress=False)

    def rankings(queries: list[str]) -> tuple[list[dict[int, float]], list[dict[int, float]]]:
        vectors = encoder.encode_many(queries)
        dense_top = exact_top_k(pool_vectors, vectors, TOP)
        dense = [{int(i): float(pool_vectors[i] @ v) for i in row} for row, v in zip(dense_top, vectors)]
        found, scores = retriever.retrieve(bm25s.tokenize(queries, stopwords="en", show_progress=False), k=TOP,
                                           show_progress=False, n_threads=1)
        lexical = [{int(i): float(s) for i, s in zip(r, sc) if s > 0} for r, sc in zip(found, scores)]
        return dense, lexical

    def ndcg(ranked: list[list[int]], judgments) -> float:
        return mean_defined(ndcg_at_k([pool_ids[i] for i in r], j, 10) for r, j in zip(ranked, judgments))

    def order(scores: dict[int, float]) -> list[int]:
        return sorted(scores, key=lambda i: -scores[i])

    def rrf(dense, lexical):
        out = []
        for d, b in zip(dense, lexical):
            fused: dict[int, float] = {}
            for ranking in (order(d), order(b)):
                for rank, i in enumerate(ranking):
                    fused[i] = fused.get(i, 0.0) + 1.0 / (60 + rank + 1)
            out.append(order(fused))
        return out

    def linear(dense, lexical, alpha):
        out = []
        for d, b in zip(dense, lexical):
            dn, bn = min_max(d), min_max(b)
            fused = {i: alpha * dn.get(i, 0.0) + (1 - alpha) * bn.get(i, 0.0) for i in set(dn) | set(bn)}
            out.append(order(fused))
        return out

    result = {"artifact": str(args.artifact), "pool_titles": len(pool_ids)}
    train_q, train_j = judged_queries(pool_ids, "train", 2000)
    td, tl = rankings(train_q)
    alphas = [round(a, 2) for a in np.arange(0.5, 1.0001, 0.05)]
    train_scores = {a: ndcg(linear(td, tl, a), train_j) for a in alphas}
    alpha = max(alphas, key=lambda a: train_scores[a])
    result["alpha_chosen_on_train"] = alpha
    result["train_ndcg_by_alpha"] = {str(a): round(s, 4) for a, s in train_scores.items()}

    dev_q, dev_j = judged_queries(pool_ids, "dev")
    dd, dl = rankings(dev_q)
    rows_out = {
        "dense (student)": ndcg([order(d) for d in dd], dev_j),
        "bm25": ndcg([order(b) for b in dl], dev_j),
        "rrf (k=60)": ndcg(rrf(dd, dl), dev_j),
        f"linear (alpha {alpha}, chosen on train)": ndcg(linear(dd, dl, alpha), dev_j),
    }
    result["dev_queries"] = len(dev_q)
    result["dev_ndcg_at_10"] = {k: round(v, 4) for k, v in rows_out.items()}
    base = rows_out["dense (student)"]
    result["dev_lift_over_dense"] = {k: round(v / base, 4) for k, v in rows_out.items()}

    times = []
    tokens = bm25s.tokenize(dev_q[:200], stopwords="en", show_progress=False, return_ids=False)
    for q in tokens:
        t0 = time.perf_counter()
        retriever.retrieve(bm25s.tokenize([" ".join(q)], stopwords="en", show_progress=False), k=TOP,
                           show_progress=False, n_threads=1)
        times.append(time.perf_counter() - t0)
    result["bm25_us_per_query_median"] = round(statistics.median(times) * 1e6, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

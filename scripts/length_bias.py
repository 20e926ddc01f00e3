"""Does the student prefer short, broad keywords? (issue #26, item 10)

    .venv/bin/python scripts/length_bias.py --artifact artifacts/full --out runs/eval/length_bias.json

On dev-split queries (judged Home Depot queries and MS MARCO web queries, never trained on),
each encoder's top-10 over the artifact's whole keyword set (exact search over the teacher's
keyword vectors, read from its index), and per query:

- the mean length in words of the student's top-10 against the teacher's top-10;
- "much shorter": the student's top-1 has at most half the words of the teacher's top-1;
- for judged queries, the nDCG@10 of each encoder's top 10 over the whole keyword set (a
  judged product's label; any other keyword, a web topic, counts as not relevant).

The figure the issue asks for is the share of queries whose student top-1 is much shorter
than the teacher's, beside the share the other way round (a symmetric baseline: two
encoders that disagree at random would show both equally).

``--priors 0,0.01,0.02``: the same figures for the student's answer re-ranked by the served
length prior (``retrieval.length_prior``: its top ``--depth`` candidates, the service's
default ef, by cosine + weight * ln(words)), with the overlap@10 of each with the teacher's
top 10 (without a prior).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np

from artifact.manifest import verify
from artifact.store import read_store
from models.eval.judged import judged_queries, ndcg_over_keywords, web_dev_queries
from retrieval.exact import exact_top_k
from retrieval.length_prior import rerank


def words(text: str) -> int:
    return len(text.split())


def main() -> None:
    from retrieval.hnsw import HnswIndex
    from retrieval.onnx_encoder import OnnxEncoder

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artifact", type=Path, required=True)
    ap.add_argument("--web", type=int, default=1000, help="MS MARCO dev queries beside the judged ones")
    ap.add_argument("--out", type=Path, default=Path("runs/eval/length_bias.json"))
    ap.add_argument("--priors", default="", help="comma-separated length-prior weights to measure (0 = none)")
    ap.add_argument("--depth", type=int, default=64, help="candidates the prior re-ranks (the service's ef)")
    args = ap.parse_args()
    priors = [float(w) for w in args.priors.split(",") if w]
    manifest = verify(args.artifact, checksums=False)
    idx = manifest["index"]
    ids, texts = read_store(args.artifact / idx["store"])
    index = HnswIndex(args.artifact / idx["path"], args.artifact / idx["store"], int(idx["dim"]), 64)
    vectors = index.vectors_of(ids)
    encoders = {name: OnnxEncoder(args.artifact / spec["onnx"], args.artifact / spec["tokenizer"],
                                  int(spec.get("max_length") or 128), threads=2)
                for name, spec in manifest["encoders"].items()}
    products = [k[3:] for k in ids if k.startswith("hd:")]
    judged, judgments = judged_queries(products, "dev")
    web = web_dev_queries(args.web)
    result = {"artifact": str(args.artifact), "keywords": len(ids)}

    def ndcg(rows) -> float:  # rows of keyword labels
        return ndcg_over_keywords([[ids[i] for i in row] for row in rows], judgments)

    for label, queries in (("judged Home Depot dev queries", judged), ("MS MARCO dev queries", web)):
        encoded = {name: enc.encode_many(queries) for name, enc in encoders.items()}
        top = {name: exact_top_k(vectors, v, 10) for name, v in encoded.items()}
        s_len = [np.mean([words(texts[i]) for i in row]) for row in top["student"]]
        t_len = [np.mean([words(texts[i]) for i in row]) for row in top["teacher"]]
        s1 = [words(texts[row[0]]) for row in top["student"]]
        t1 = [words(texts[row[0]]) for row in top["teacher"]]
        shorter = np.mean([a * 2 <= b and a != b for a, b in zip(s1, t1)])
        longer = np.mean([b * 2 <= a and a != b for a, b in zip(s1, t1)])
        examples = [(q, texts[ts[0]], texts[tt[0]]) for q, ts, tt, a, b in zip(queries, top["student"], top["teacher"], s1, t1)
                    if a * 2 <= b and a != b]
        random.Random(0).shuffle(examples)
        result[label] = {
            "queries": len(queries),
            "mean_words_top10_student": round(float(np.mean(s_len)), 2),
            "mean_words_top10_teacher": round(float(np.mean(t_len)), 2),
            "share_student_top1_at_most_half_the_teachers": round(float(shorter), 4),
            "share_teacher_top1_at_most_half_the_students": round(float(longer), 4),
            "examples_student_much_shorter": examples[:8],
        }
        if queries is judged:
            result[label]["ndcg_at_10_student"] = ndcg(top["student"].tolist())
            result[label]["ndcg_at_10_teacher"] = ndcg(top["teacher"].tolist())
        if priors:
            deep = exact_top_k(vectors, encoded["student"], args.depth)
            rows = {}
            for weight in priors:
                ranked = []
                for row, v in zip(deep.tolist(), encoded["student"]):
                    hits = [{"row": i, "text": texts[i], "score": float(vectors[i] @ v)} for i in row]
                    ranked.append([hit["row"] for hit in rerank(hits, weight, 10)])
                first = [words(texts[row[0]]) for row in ranked]
                figures = {
                    "mean_words_top10": round(float(np.mean([[words(texts[i]) for i in row] for row in ranked])), 2),
                    "share_top1_at_most_half_the_teachers": round(float(np.mean(
                        [a * 2 <= b and a != b for a, b in zip(first, t1)])), 4),
                    "share_teacher_top1_at_most_half_this": round(float(np.mean(
                        [b * 2 <= a and a != b for a, b in zip(first, t1)])), 4),
                    "overlap_at_10_with_teacher": round(float(np.mean(
                        [len(set(r) & set(t.tolist())) / 10 for r, t in zip(ranked, top["teacher"])])), 4),
                }
                if queries is judged:
                    figures["ndcg_at_10"] = ndcg(ranked)
                rows[str(weight)] = figures
            result[label]["student_with_length_prior"] = rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()

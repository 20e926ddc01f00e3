"""What a judged query gets from the served options over the whole keyword set (issues #26, #27).

    .venv/bin/python scripts/served_quality.py --artifact artifacts/full --out runs/eval/served_quality.json

The gate scores exact search over the product titles only; the service searches every
keyword (product titles and short web topics alike). Here, per judged Home Depot dev query,
the served options as the service composes them (service/serving.py), over the artifact's
whole keyword set, exact search: the student's dense top 10; with the length prior (its top
64, the default ef, re-ranked by ``retrieval.length_prior``); with BM25 fused by RRF
(``retrieval.lexical``: each side's top 50); both (the prior first, then the fusion); BM25
alone; and the teacher's dense top 10. nDCG@10 counts a judged product's label; any other
keyword (a web topic, an unjudged title) counts as not relevant.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from artifact.manifest import verify
from artifact.store import read_store
from models.eval.judged import judged_queries, ndcg_over_keywords
from retrieval.exact import exact_top_k
from retrieval.length_prior import rerank
from retrieval.lexical import LexicalIndex, rrf

CANDIDATES = 64  # the service's default ef: what the prior re-ranks
FUSED = 50  # service.serving.FUSION_DEPTH


def main() -> None:
    from retrieval.hnsw import HnswIndex
    from retrieval.onnx_encoder import OnnxEncoder

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artifact", type=Path, required=True)
    ap.add_argument("--prior", type=float, default=0.02)
    ap.add_argument("--out", type=Path, default=Path("runs/eval/served_quality.json"))
    args = ap.parse_args()
    manifest = verify(args.artifact, checksums=False)
    idx = manifest["index"]
    ids, texts = read_store(args.artifact / idx["store"])
    vectors = HnswIndex(args.artifact / idx["path"], args.artifact / idx["store"], int(idx["dim"]), 64).vectors_of(ids)
    lexical = LexicalIndex(args.artifact / manifest["lexical"]["path"], ids)
    queries, judgments = judged_queries([k[3:] for k in ids if k.startswith("hd:")], "dev")

    def ndcg(rows: list[list[str]]) -> float:
        return ndcg_over_keywords(rows, judgments)

    encoded = {}
    for name, spec in manifest["encoders"].items():
        encoder = OnnxEncoder(args.artifact / spec["onnx"], args.artifact / spec["tokenizer"],
                              int(spec.get("max_length") or 128), threads=2)
        encoded[name] = encoder.encode_many(queries)
    top = exact_top_k(vectors, encoded["student"], CANDIDATES)
    dense = [[{"id": ids[i], "text": texts[i], "score": float(vectors[i] @ v)} for i in row]
             for row, v in zip(top.tolist(), encoded["student"])]
    with_prior = [rerank(hits, args.prior, FUSED) for hits in dense]
    bm25 = [[ids[row] for row, _ in found] for found in lexical.search(queries, FUSED)]
    teacher = [[ids[i] for i in row] for row in exact_top_k(vectors, encoded["teacher"], 10).tolist()]
    rows = {
        "student (dense)": ndcg([[h["id"] for h in hits[:10]] for hits in dense]),
        f"student, length prior {args.prior}": ndcg([[h["id"] for h in hits[:10]] for hits in with_prior]),
        "student, fusion rrf": ndcg([[i for i, _ in rrf([h["id"] for h in hits[:FUSED]], lex, k=10)]
                                     for hits, lex in zip(dense, bm25)]),
        f"student, length prior {args.prior} + fusion rrf": ndcg([[i for i, _ in rrf([h["id"] for h in hits], lex, k=10)]
                                                                  for hits, lex in zip(with_prior, bm25)]),
        "bm25 alone": ndcg([lex[:10] for lex in bm25]),
        "teacher (dense)": ndcg(teacher),
    }
    base = rows["student (dense)"]
    result = {"artifact": str(args.artifact), "keywords": len(ids), "dev_queries": len(queries),
              "ndcg_at_10": rows, "x_student_dense": {k: round(v / base, 4) for k, v in rows.items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

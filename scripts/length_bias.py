"""Does the student prefer short, broad keywords? (issue #26, item 10)

    .venv/bin/python scripts/length_bias.py --artifact artifacts/full --out runs/eval/length_bias.json

On dev-split queries (judged Home Depot queries and MS MARCO web queries, never trained on),
each encoder's top-10 over the artifact's whole keyword set (exact search over the teacher's
keyword vectors, read from its index), and per query:

- the mean length in words of the student's top-10 against the teacher's top-10;
- "much shorter": the student's top-1 has at most half the words of the teacher's top-1;
- for judged queries, the nDCG@10 of each encoder's product hits (the judged set's labels).

The figure the issue asks for is the share of queries whose student top-1 is much shorter
than the teacher's, beside the share the other way round (a symmetric baseline: two
encoders that disagree at random would show both equally).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np

from artifact.manifest import verify
from artifact.store import read_store
from models.eval.judged import judged_queries, web_dev_queries
from retrieval.exact import exact_top_k


def words(text: str) -> int:
    return len(text.split())


def main() -> None:
    from retrieval.hnsw import HnswIndex
    from retrieval.onnx_encoder import OnnxEncoder

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artifact", type=Path, required=True)
    ap.add_argument("--web", type=int, default=1000, help="MS MARCO dev queries beside the judged ones")
    ap.add_argument("--out", type=Path, default=Path("runs/eval/length_bias.json"))
    args = ap.parse_args()
    manifest = verify(args.artifact, checksums=False)
    idx = manifest["index"]
    ids, texts = read_store(args.artifact / idx["store"])
    index = HnswIndex(args.artifact / idx["path"], args.artifact / idx["store"], int(idx["dim"]), 64)
    vectors = index.vectors_of(ids)
    encoders = {name: OnnxEncoder(args.artifact / spec["onnx"], args.artifact / spec["tokenizer"],
                                  int(spec.get("max_length") or 128), threads=2)
                for name, spec in manifest["encoders"].items()}
    products = [k[3:] for k in ids if k.startswith("hd:")]
    judged, _ = judged_queries(products, "dev")
    web = web_dev_queries(args.web)
    result = {"artifact": str(args.artifact), "keywords": len(ids)}
    for label, queries in (("judged Home Depot dev queries", judged), ("MS MARCO dev queries", web)):
        top = {name: exact_top_k(vectors, enc.encode_many(queries), 10) for name, enc in encoders.items()}
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()

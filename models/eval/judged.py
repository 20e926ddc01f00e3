"""Evaluation on judged data (``hlm eval``): student against teacher, honestly.

- Home Depot dev queries (hash split, never trained on) against an index of ALL product
  titles encoded by the teacher (exact search, so the index's own error is not mixed in):
  nDCG@10 (gain = relevance - 1, unjudged = 0), Recall@10 and Recall@100 of relevant
  products (relevance >= 2.33), P@10 over judged items.
- Teacher agreement on held-out web queries (MS MARCO dev split) against a keyword set:
  overlap@10 with the teacher's top 10 and mean cosine to the teacher's vector.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from models import data as data_mod
from retrieval.exact import exact_top_k
from models.eval.metrics import judged_precision_at_k, mean_defined, ndcg_at_k, overlap_at_k, recall_at_k
from models.splits import split_of

EncodeFn = Callable[[Sequence[str]], np.ndarray]


@dataclass
class JudgedEval:
    """Dev queries, their judgments, and the teacher's vectors of every product title."""

    queries: list[str]
    judgments: list[dict[str, float]]
    product_ids: list[str]
    product_vectors: np.ndarray

    def score(self, encode: EncodeFn, ranked: Callable[[np.ndarray], list[list[str]]] | None = None) -> dict[str, float]:
        """``ranked``: product ids best first per query vector, from a served index (default:
        exact search over every product title)."""
        vectors = encode(self.queries)
        if ranked is None:
            top = exact_top_k(self.product_vectors, vectors, 100)
            ranked = [[self.product_ids[i] for i in row] for row in top.tolist()]
        else:
            ranked = ranked(vectors)
        return {
            "ndcg_at_10": mean_defined(ndcg_at_k(r, j, 10) for r, j in zip(ranked, self.judgments)),
            "recall_at_10": mean_defined(recall_at_k(r, j, 10) for r, j in zip(ranked, self.judgments)),
            "recall_at_100": mean_defined(recall_at_k(r, j, 100) for r, j in zip(ranked, self.judgments)),
            "p_at_10_judged": mean_defined(judged_precision_at_k(r, j, 10) for r, j in zip(ranked, self.judgments)),
            "queries": len(self.queries),
        }


def judged_queries(known_ids, split: str = "dev", limit: int | None = None) -> tuple[list[str], list[dict[str, float]]]:
    """The ``split``'s judged queries (the first ``limit``) and their judgments, keeping only
    products in ``known_ids`` (a judged product missing from the catalogue cannot be found)."""
    judged = data_mod.load_sample_judgments()
    known = set(known_ids)
    queries, judgments = [], []
    for query, graded in judged.by_query.items():
        if split_of(query) != split:
            continue
        graded = {doc: r for doc, r in graded.items() if doc in known}
        if graded:
            queries.append(query)
            judgments.append(graded)
    return queries[:limit], judgments[:limit]


def ndcg_over_keywords(rows: Sequence[Sequence[str]], judgments: Sequence[dict[str, float]], k: int = 10) -> float:
    """Mean nDCG@k of keyword-id result lists over a whole keyword set: an ``hd:`` keyword is
    scored as its product id, any other keyword is unjudged (gain 0)."""
    return round(mean_defined(ndcg_at_k([kid[3:] if kid.startswith("hd:") else kid for kid in row], graded, k)
                              for row, graded in zip(rows, judgments)), 4)


def dev_labels(keyword_ids: Sequence[str]) -> dict[str, dict[str, float]]:
    """The dev split's judged queries whose judged products are among ``keyword_ids`` (the build's
    ``hd:<uid>`` ids, models/inputs.py), each with those products' labels by keyword id: what the
    artifact's ``eval/judged_dev.json`` holds (artifact/judged.py)."""
    indexed = [k[3:] for k in keyword_ids if k.startswith("hd:")]
    queries, judgments = judged_queries(indexed, "dev")
    return {q: {f"hd:{doc}": r for doc, r in graded.items()} for q, graded in zip(queries, judgments)}


def judged_eval_set(product_vectors_fn: Callable[[list[str]], np.ndarray], split: str = "dev", limit: int | None = None) -> JudgedEval:
    """The judged evaluation set; ``product_vectors_fn`` gives teacher vectors for titles."""
    products = data_mod.load_sample("products")
    queries, judgments = judged_queries(products.ids, split, limit)
    return JudgedEval(queries, judgments, products.ids, product_vectors_fn(products.texts))


def web_dev_queries(limit: int) -> list[str]:
    msmarco = data_mod.load_sample("msmarco")
    return [q for q in msmarco.texts if split_of(q) == "dev"][:limit]


def agreement(student_vectors: np.ndarray, teacher_vectors: np.ndarray, keyword_vectors: np.ndarray, k: int = 10) -> dict[str, float]:
    k = min(k, len(keyword_vectors))
    s_top = exact_top_k(keyword_vectors, student_vectors, k).tolist()
    t_top = exact_top_k(keyword_vectors, teacher_vectors, k).tolist()
    return {
        "overlap_at_10": float(np.mean([overlap_at_k(a, b, k) for a, b in zip(s_top, t_top)])),
        "mean_cosine": float((student_vectors * teacher_vectors).sum(axis=1).mean()),
        "queries": len(student_vectors),
    }


def with_ratios(rows: dict[str, dict], reference: str = "teacher") -> dict[str, dict]:
    """Add ``<metric>_ratio`` = value / teacher's value to every row."""
    ref = rows[reference]
    out = {}
    for name, row in rows.items():
        row = dict(row)
        for key in ("ndcg_at_10", "recall_at_10", "recall_at_100", "p_at_10_judged"):
            if row.get(key) is not None and ref.get(key):
                row[f"{key}_ratio"] = row[key] / ref[key]
        out[name] = row
    return out


def markdown_table(rows: dict[str, dict]) -> str:
    cols = ["ndcg_at_10", "recall_at_10", "recall_at_100", "p_at_10_judged", "ndcg_at_10_ratio", "overlap_at_10", "mean_cosine"]
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, row in rows.items():
        cells = [f"{row[c]:.4f}" if isinstance(row.get(c), float) else "–" for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

"""Retrieval metrics. Each works on ranked lists of keyword ids (best first).

Conventions (as ../shared/data/README.md advises for incomplete judgments):
- nDCG@k: gain = relevance - 1 (so "not relevant" = 0), unjudged = 0; the ideal ranking
  is built from the judged items only.
- Recall@k: share of relevant items (relevance >= threshold, default 2.33) found in the top k.
- P@k over judged items: among the judged items in the top k, the share that is relevant.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

RELEVANT = 2.33


def dcg(gains: Sequence[float]) -> float:
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains))


def ndcg_at_k(ranked: Sequence[str], judged: Mapping[str, float], k: int = 10) -> float | None:
    """None when no judged item has positive gain (the query cannot be scored)."""
    ideal = sorted((r - 1.0 for r in judged.values()), reverse=True)[:k]
    best = dcg(ideal)
    if best <= 0:
        return None
    gains = [max(judged.get(doc, 1.0) - 1.0, 0.0) for doc in ranked[:k]]
    return dcg(gains) / best


def recall_at_k(ranked: Sequence[str], judged: Mapping[str, float], k: int, threshold: float = RELEVANT) -> float | None:
    relevant = {doc for doc, r in judged.items() if r >= threshold}
    if not relevant:
        return None
    return len(relevant & set(ranked[:k])) / len(relevant)


def judged_precision_at_k(ranked: Sequence[str], judged: Mapping[str, float], k: int, threshold: float = RELEVANT) -> float | None:
    seen = [judged[doc] for doc in ranked[:k] if doc in judged]
    if not seen:
        return None
    return sum(r >= threshold for r in seen) / len(seen)


def overlap_at_k(a: Sequence, b: Sequence, k: int = 10) -> float:
    """|top-k(a) & top-k(b)| / k: how much of the teacher's top k the student keeps."""
    return len(set(list(a)[:k]) & set(list(b)[:k])) / k


def mean_defined(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None

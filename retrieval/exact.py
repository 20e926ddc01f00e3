"""Exact search and recall: the ground truth every approximate index is measured against."""

from __future__ import annotations

from typing import Callable

import numpy as np


def exact_top_k(keyword_vectors: np.ndarray, query_vectors: np.ndarray, k: int) -> np.ndarray:
    """Exact inner-product top-k labels (rows of ``keyword_vectors``), best first."""
    top = []
    k = min(k, len(keyword_vectors))
    for start in range(0, len(query_vectors), 512):
        scores = query_vectors[start : start + 512] @ keyword_vectors.T
        part = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        order = np.take_along_axis(scores, part, axis=1).argsort(axis=1)[:, ::-1]
        top.append(np.take_along_axis(part, order, axis=1))
    return np.concatenate(top) if top else np.zeros((0, k), dtype=np.int64)


def recall_at_k(found: list[list], truth: list[list]) -> float:
    """Share of the true top-k found, over all queries (rows may hold labels or ids)."""
    total = sum(len(t) for t in truth)
    hits = sum(len(set(f) & set(t)) for f, t in zip(found, truth))
    return hits / total if total else 1.0


def ef_for_recall(recall_at_ef: Callable[[int], float], k: int = 10, target: float = 0.99) -> int | None:
    """The smallest ef of a fixed ladder whose recall reaches ``target`` (None: none does)."""
    for ef in (10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512):
        if ef >= k and recall_at_ef(ef) >= target:
            return ef
    return None

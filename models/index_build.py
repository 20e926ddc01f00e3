"""Build the hnswlib keyword index and measure its recall against exact search."""

from __future__ import annotations

from pathlib import Path

import hnswlib
import numpy as np


def build_hnsw(vectors: np.ndarray, path: Path, m: int, ef_construction: int, threads: int = 2) -> hnswlib.Index:
    index = hnswlib.Index(space="ip", dim=vectors.shape[1])
    # A fixed seed makes the graph, and so the artifact's checksum, reproducible.
    index.init_index(max_elements=len(vectors), M=m, ef_construction=ef_construction, random_seed=100)
    index.set_num_threads(threads)
    index.add_items(vectors, np.arange(len(vectors)))
    index.save_index(str(path))
    return index


def exact_top_k(keyword_vectors: np.ndarray, query_vectors: np.ndarray, k: int) -> np.ndarray:
    """Exact inner-product top-k labels, best first (the ground truth for recall)."""
    top = []
    for start in range(0, len(query_vectors), 512):
        scores = query_vectors[start : start + 512] @ keyword_vectors.T
        part = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        order = np.take_along_axis(scores, part, axis=1).argsort(axis=1)[:, ::-1]
        top.append(np.take_along_axis(part, order, axis=1))
    return np.concatenate(top)


def hnsw_recall(index: hnswlib.Index, keyword_vectors: np.ndarray, query_vectors: np.ndarray, k: int, ef: int) -> float:
    k = min(k, len(keyword_vectors))
    index.set_ef(max(ef, k))
    labels, _ = index.knn_query(query_vectors, k=k)
    truth = exact_top_k(keyword_vectors, query_vectors, k)
    hits = sum(len(set(a) & set(b)) for a, b in zip(labels.tolist(), truth.tolist()))
    return hits / (k * len(query_vectors))


def ef_for_recall(index, keyword_vectors, query_vectors, k: int = 10, target: float = 0.99) -> int | None:
    for ef in (10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512):
        if ef >= k and hnsw_recall(index, keyword_vectors, query_vectors, k, ef) >= target:
            return ef
    return None

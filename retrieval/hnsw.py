"""The embedded keyword index: an hnswlib graph over teacher keyword vectors + the keyword store.

Label ``i`` of the graph is row ``i`` of the store (``artifact/store.py``). The space is
inner product over L2-normalised vectors (``retrieval.base.SPACE``), so hnswlib's distance
is ``1 - cosine`` and a score is ``1 - distance``; both conventions live only here.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence

import hnswlib
import numpy as np

from artifact.store import read_store
from retrieval.base import SPACE, Hit, SearchParams
from retrieval.exact import exact_top_k, recall_at_k

# A fixed seed makes the graph, and so the artifact's checksum, reproducible.
BUILD_SEED = 100


def build_hnsw(vectors: np.ndarray, path: Path, m: int, ef_construction: int, threads: int = 2) -> hnswlib.Index:
    graph = hnswlib.Index(space=SPACE, dim=vectors.shape[1])
    graph.init_index(max_elements=len(vectors), M=m, ef_construction=ef_construction, random_seed=BUILD_SEED)
    graph.set_num_threads(threads)
    graph.add_items(vectors, np.arange(len(vectors)))
    graph.save_index(str(path))
    return graph


def graph_recall(graph: hnswlib.Index, keyword_vectors: np.ndarray, query_vectors: np.ndarray, k: int, ef: int) -> float:
    """recall@k of an hnswlib graph at ``ef`` against exact search over the same vectors."""
    k = min(k, len(keyword_vectors))
    graph.set_ef(max(ef, k))
    labels, _ = graph.knn_query(query_vectors, k=k)
    return recall_at_k(labels.tolist(), exact_top_k(keyword_vectors, query_vectors, k).tolist())


class HnswIndex:
    """The artifact's index, loaded for serving (read side of ``retrieval.base.VectorIndex``)."""

    backend = "hnswlib"

    def __init__(self, index_path: Path, store_path: Path, dim: int, ef: int):
        self.ids, self.texts = read_store(store_path)
        self.dim = dim
        self.graph = hnswlib.Index(space=SPACE, dim=dim)
        self.graph.load_index(str(index_path), max_elements=len(self.ids))
        if self.graph.get_current_count() != len(self.ids):
            raise ValueError(
                f"The index holds {self.graph.get_current_count()} vectors but the keyword store has {len(self.ids)} rows."
            )
        self.graph.set_num_threads(1)  # one query batch per worker thread; the workers are the parallelism
        self.default_ef = ef
        self._ef = ef
        # set_ef is global to the graph. Searches at the graph's current ef run side by
        # side (hnswlib searches are thread-safe); one at another ef waits until no
        # search is running, then changes it.
        self._cond = threading.Condition(threading.Lock())
        self._searching = 0
        self.graph.set_ef(ef)

    def __len__(self) -> int:
        return len(self.ids)

    def verify(self) -> None:
        """Stored vectors are L2-normalised: norms away from 1 mean the graph was read with
        the wrong dimension (hnswlib does not check it) and would answer nonsense."""
        n = len(self.ids)
        if not n:
            return
        norms = np.linalg.norm(self.graph.get_items(sorted({0, n // 2, n - 1})), axis=1)
        if not np.allclose(norms, 1.0, atol=1e-2):
            raise ValueError(f"it does not hold {self.dim}-d unit vectors (norms {', '.join(f'{x:.3f}' for x in norms)}): "
                             "its dimension does not match the manifest")

    def search_labels(self, vectors: np.ndarray, k: int, ef: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(labels, scores) of shape [n, k'] with k' = min(k, size), best first."""
        k = min(k, len(self.ids))
        ef = max(ef or self.default_ef, k)  # hnswlib needs ef >= k
        with self._cond:
            while ef != self._ef and self._searching:
                self._cond.wait()
            if ef != self._ef:
                self.graph.set_ef(ef)
                self._ef = ef
            self._searching += 1
        try:
            labels, distances = self.graph.knn_query(vectors, k=k)
        finally:
            with self._cond:
                self._searching -= 1
                if not self._searching:
                    self._cond.notify_all()
        return labels, 1.0 - distances

    def search(self, vectors: np.ndarray, params: SearchParams) -> list[list[Hit]]:
        if params.filter:
            raise NotImplementedError("this index has no keyword attributes to filter on")
        labels, scores = self.search_labels(vectors, params.k, params.ef)
        return [
            [Hit(self.ids[l], self.texts[l], float(s)) for l, s in zip(row_labels, row_scores)]
            for row_labels, row_scores in zip(labels.tolist(), scores.tolist())
        ]

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, texts: Sequence[str], attributes: Sequence[dict]) -> None:
        raise NotImplementedError("the artifact's index is read-only")

    def delete(self, ids: Sequence[str]) -> int:
        raise NotImplementedError("the artifact's index is read-only")

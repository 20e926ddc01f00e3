"""The keyword index: an hnswlib graph over teacher keyword vectors plus the keyword store.

Label ``i`` of the graph is row ``i`` of ``keywords.tsv`` (id <TAB> text). The index is
inner product over L2-normalised vectors, so a score is the cosine similarity.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import hnswlib
import numpy as np


def read_store(path: Path) -> tuple[list[str], list[str]]:
    ids, texts = [], []
    with open(path, encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n").split("\t")
        if header != ["id", "text"]:
            raise ValueError(f"{path} does not start with the header 'id<TAB>text'.")
        for line in handle:
            row_id, _, text = line.rstrip("\n").partition("\t")
            ids.append(row_id)
            texts.append(text)
    return ids, texts


def write_store(path: Path, ids, texts) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("id\ttext\n")
        for row_id, text in zip(ids, texts):
            handle.write(f"{row_id}\t{text}\n")


@dataclass
class Hit:
    id: str
    text: str
    score: float


class KeywordIndex:
    def __init__(self, index_path: Path, store_path: Path, dim: int, ef: int, threads: int = 1):
        self.ids, self.texts = read_store(store_path)
        self.dim = dim
        self.graph = hnswlib.Index(space="ip", dim=dim)
        self.graph.load_index(str(index_path), max_elements=len(self.ids))
        if self.graph.get_current_count() != len(self.ids):
            raise ValueError(
                f"The index holds {self.graph.get_current_count()} vectors but the keyword store has {len(self.ids)} rows."
            )
        self.graph.set_num_threads(threads)
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
        return labels, 1.0 - distances  # hnswlib's ip distance is 1 - dot

    def search(self, vectors: np.ndarray, k: int, ef: int | None = None) -> list[list[Hit]]:
        labels, scores = self.search_labels(vectors, k, ef)
        return [
            [Hit(self.ids[l], self.texts[l], float(s)) for l, s in zip(row_labels, row_scores)]
            for row_labels, row_scores in zip(labels, scores)
        ]

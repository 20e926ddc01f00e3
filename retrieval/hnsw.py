"""The embedded keyword index: an hnswlib graph over teacher keyword vectors + the keyword store.

Label ``i`` of the graph is row ``i`` of the store (``artifact/store.py``). The space is
inner product over L2-normalised vectors (``retrieval.base.SPACE``), so hnswlib's distance
is ``1 - cosine`` and a score is ``1 - distance``; both conventions live only here.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence

import hnswlib
import numpy as np

from artifact.store import read_store
from retrieval.base import SPACE, Hit, SearchParams
from retrieval.exact import exact_top_k, recall_at_k
from retrieval.keyword_table import KeywordTable

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


class HnswIndex(KeywordTable):
    """The artifact's index, loaded for serving: ``retrieval.base.VectorIndex``, read and write side.

    Labels: the artifact's rows are labels ``0..n-1``; every live upsert gets a fresh label
    (monotonic, never reused: hnswlib's ``replace_deleted`` reuses the *slot* of a deleted
    element and forgets its label, so a reused label value could alias a deleted element
    still in the graph). Deleted elements stay in the graph marked deleted (never returned)
    until an add takes their slot.

    Concurrency (hnswlib's add / mark_deleted are not safe beside searches, issues #562,
    #590), one writer at a time, two ways:

    - ``double_buffer`` (the service's default when live keywords are on): two copies of the
      graph. A change is written into the spare copy, which no search reads; then the copies
      swap in one step under the lock (with the keyword table), and the old one, once the
      searches still on it have finished, gets the same change. Searches never wait for a
      write; memory: twice the graph.
    - otherwise one graph: a write takes it alone, one element at a time, so a search waits
      at most one add (~0.3-2 ms on a quiet machine; a writer preempted inside an add on a
      busy one holds it longer). New elements are added hidden (labels >= ``_hidden_from``
      are filtered out of every search) and made visible, with the deletes, in one short
      exclusive step.

    Either way no search sees half a change.
    """

    backend = "hnswlib"

    def __init__(self, index_path: Path, store_path: Path, dim: int, ef: int,
                 attributes_path: Optional[Path] = None, headroom: float = 0.1, double_buffer: bool = False):
        ids, texts = read_store(store_path)
        self.dim = dim
        # The keyword table (retrieval/keyword_table.py); the live upserts' vectors are kept in
        # it too (reading them back from the graph is slow).
        self._init_table(ids, texts, attributes_path)
        self.graph = self._load_graph(index_path, len(ids), headroom, ef)
        # The spare copy; None: one graph, written under the exclusive lock.
        self._spare: Optional[hnswlib.Index] = (self._load_graph(index_path, len(ids), headroom, ef)
                                                 if double_buffer else None)
        self.default_ef = ef
        self._hidden_from: Optional[int] = None  # labels >= this are a write in progress (one graph)
        # set_ef is global to a graph. Searches at a graph's current ef run side by side
        # (hnswlib searches are thread-safe); one at another ef waits until no search runs on
        # that graph, then changes it. The keyword table is read and changed under _cond.
        self._cond = threading.Condition(threading.Lock())
        graphs = [g for g in (self.graph, self._spare) if g is not None]
        self._users = {id(g): 0 for g in graphs}  # searches running on each graph
        self._efs = {id(g): ef for g in graphs}
        self._waiting = 0  # searches waiting to start
        self._writing = False  # one graph: a write holds it
        self._writer_waiting = False
        self._handoff = 0  # searches let in before the writer's next step
        self._writer = threading.Lock()  # one writer at a time (the live ingest thread)

    def _load_graph(self, index_path: Path, rows: int, headroom: float, ef: int) -> hnswlib.Index:
        graph = hnswlib.Index(space=SPACE, dim=self.dim)
        graph.load_index(str(index_path), max_elements=rows, allow_replace_deleted=True)
        if graph.get_current_count() != rows:
            raise ValueError(f"The index holds {graph.get_current_count()} vectors but the keyword store has {rows} rows.")
        graph.set_num_threads(1)  # one query batch per worker thread; the workers are the parallelism
        # Room for live upserts without a resize (which copies the whole graph) on the first ones.
        graph.resize_index(rows + max(1024, int(rows * headroom)))
        graph.set_ef(ef)
        return graph

    def vectors_of(self, keyword_ids: Sequence[str]) -> np.ndarray:
        with self._reading(None) as (graph, _):
            with self._cond:
                labels = [self._label[k] for k in keyword_ids]
            return self._items(labels, graph)

    def _items(self, labels: Sequence[int], graph: hnswlib.Index) -> np.ndarray:
        out = np.empty((len(labels), self.dim), dtype=np.float32)
        read = []
        for i, label in enumerate(labels):
            vector = self._vec.get(label)
            if vector is None:
                read.append(i)
            else:
                out[i] = vector
        if read:  # hnswlib's get_items costs ~0.1 ms a vector: only for the artifact's own rows
            out[read] = np.asarray(graph.get_items([int(labels[i]) for i in read], return_type="numpy"))
        return out

    def verify(self) -> None:
        """Stored vectors are L2-normalised: norms away from 1 mean the graph was read with
        the wrong dimension (hnswlib does not check it) and would answer nonsense."""
        labels = sorted(self._id)
        if not labels:
            return
        probe = sorted({labels[0], labels[len(labels) // 2], labels[-1]})
        norms = np.linalg.norm(self._items(probe, self.graph), axis=1)
        if not np.allclose(norms, 1.0, atol=1e-2):
            raise ValueError(f"it does not hold {self.dim}-d unit vectors (norms {', '.join(f'{x:.3f}' for x in norms)}): "
                             "its dimension does not match the manifest")

    # ---- read side ----

    @contextmanager
    def _reading(self, ef: Optional[int]) -> Iterator[tuple[hnswlib.Index, Optional[int]]]:
        """Share the served graph with other searches (at ``ef`` if given); yields it and the hidden-from label."""
        with self._cond:
            self._waiting += 1
            while True:
                graph = self.graph
                key = id(graph)
                blocked = self._writing or (self._writer_waiting and self._handoff <= 0)
                if not blocked and not (ef is not None and ef != self._efs[key] and self._users[key]):
                    break
                self._cond.wait()
            self._waiting -= 1
            if self._handoff > 0:
                self._handoff -= 1
            if ef is not None and ef != self._efs[key]:
                graph.set_ef(ef)
                self._efs[key] = ef
            self._users[key] += 1
            hidden = self._hidden_from
        try:
            yield graph, hidden
        finally:
            with self._cond:
                self._users[key] -= 1
                if not self._users[key]:
                    self._cond.notify_all()

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One graph: hold it alone (no search on it)."""
        # Phase-fair: a waiting writer holds back new searches (else a steady stream of them
        # starves it), and the searches that waited for one add go before the writer's next
        # (else it re-takes the graph at once and holds it for the whole change).
        with self._cond:
            self._writer_waiting = True
            while self._writing or self._users[id(self.graph)] or self._handoff > 0:
                self._cond.wait()
            self._writer_waiting = False
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._handoff = self._waiting
                self._cond.notify_all()

    def search_labels(self, vectors: np.ndarray, k: int, ef: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(labels, scores) of shape [n, k'] with k' = min(k, size), best first (no filter)."""
        k = min(k, len(self._id))
        ef = max(ef or self.default_ef, k)  # hnswlib needs ef >= k
        with self._reading(ef) as (graph, hidden):
            return self._knn(graph, vectors, k, None, hidden)

    def _knn(self, graph: hnswlib.Index, vectors: np.ndarray, k: int, allowed: Optional[set[int]],
             hidden: Optional[int]) -> tuple[np.ndarray, np.ndarray]:
        """Search restricted to ``allowed`` labels (None: every live one), inside the ANN search.

        Few allowed labels: exact search over just their vectors (exact, and cheaper than a
        graph walk that must skip almost everything). Otherwise the graph walk, with
        hnswlib's filter callable, so the walk goes on until it has k allowed hits. The
        caller holds the read side of ``graph``. ``allowed`` sets hold committed labels only;
        without one, labels of a write in progress (>= ``hidden``) are filtered out."""
        n = len(vectors)
        k = min(k, len(self._id) if allowed is None else len(allowed))
        if k <= 0:
            return np.zeros((n, 0), dtype=np.int64), np.zeros((n, 0), dtype=np.float32)
        if allowed is not None:
            keep = allowed.__contains__
        elif hidden is not None:
            keep = hidden.__gt__  # label < hidden: committed
        else:
            keep = None
        if allowed is None or len(allowed) > EXACT_FILTER_MAX or len(allowed - self._vec.keys()) > EXACT_READS_MAX:
            try:
                labels, distances = graph.knn_query(vectors, k=k, filter=keep)
                return labels, 1.0 - distances
            except RuntimeError:  # the walk found fewer than k (a graph cut by deletes): exact below
                pass
        if allowed is None:
            with self._cond:
                allowed = set(self._id)
        if len(allowed - self._vec.keys()) > EXACT_FALLBACK_READS_MAX:
            # Exact search would read too many vectors back from the graph: the best the walk
            # finds, fewer than k (hnswlib only raises when it finds fewer than asked).
            while k > 1:
                k //= 2
                try:
                    labels, distances = graph.knn_query(vectors, k=k, filter=keep)
                    return labels, 1.0 - distances
                except RuntimeError:
                    continue
            return np.zeros((n, 0), dtype=np.int64), np.zeros((n, 0), dtype=np.float32)
        return _exact(self, graph, vectors, sorted(allowed), k)

    def search(self, vectors: np.ndarray, params: SearchParams) -> list[list[Hit]]:
        k = min(params.k, len(self._id))
        ef = max(params.ef or self.default_ef, k)
        with self._reading(ef) as (graph, hidden):
            if params.filter:
                with self._cond:
                    allowed = self.allowed(params.filter)
            else:
                allowed = None
            labels, scores = self._knn(graph, vectors, params.k, allowed, hidden)
            with self._cond:  # a label a change removed since this search began is left out
                ids, texts = self._id, self._text
                return [
                    [Hit(ids[l], texts[l], float(s)) for l, s in zip(row_labels, row_scores) if l in ids]
                    for row_labels, row_scores in zip(labels.tolist(), scores.tolist())
                ]

    # ---- write side (one writer) ----

    def apply(self, delete_ids: Sequence[str], ids: Sequence[str], vectors: np.ndarray, texts: Sequence[str],
              attributes: Sequence[dict]) -> int:
        """Delete ``delete_ids`` and upsert the rest as one change no search sees half-done.

        Returns how many of ``delete_ids`` were present. Checks everything before touching
        a graph, so a refused change leaves the index as it was."""
        vectors = self._checked_change(delete_ids, ids, vectors, texts, attributes)
        with self._writer:
            first = self._next_label
            labels = list(range(first, first + len(ids)))
            if self._spare is not None:
                return self._apply_buffered(delete_ids, ids, labels, vectors, texts, attributes)
            if ids:
                self._reserve(len(ids))
                with self._cond:
                    self._hidden_from = first
                try:
                    for label, row in zip(labels, vectors):
                        with self._exclusive():  # one add at a time: a search waits at most one add
                            self.graph.add_items(row[None, :], [label], replace_deleted=True)
                except BaseException:
                    with self._exclusive():  # undo: the hidden additions go, nothing became visible
                        for label in labels:
                            try:
                                self.graph.mark_deleted(label)
                            except RuntimeError:
                                pass
                        self._hidden_from = None
                    self._next_label = first + len(ids)
                    raise
            self._next_label = first + len(ids)
            with self._exclusive():  # the commit: marks and bookkeeping only, no graph walk
                with self._cond:
                    return self._commit(delete_ids, ids, labels, vectors, texts, attributes, mark=self.graph)

    def _apply_buffered(self, delete_ids, ids, labels, vectors, texts, attributes) -> int:
        with self._cond:
            gone = [self._label[k] for k in list(delete_ids) + list(ids) if k in self._label]
        self._next_label += len(ids)
        spare = self._spare
        self._wait_unused(spare)  # searches that began before the last swap have left it
        try:
            _write(spare, gone, labels, vectors)
        except BaseException:
            self._spare = None  # out of step with the served graph: one graph from now on
            raise
        with self._cond:  # the swap, with the keyword table: one step for every search
            served = self.graph
            self.graph, self._spare = spare, served
            deleted = self._commit(delete_ids, ids, labels, vectors, texts, attributes, mark=None)
            self._cond.notify_all()  # searches waiting for an ef change on the old graph
        self._wait_unused(served)
        try:
            _write(served, gone, labels, vectors)  # the same change: the spare catches up
        except BaseException:
            self._spare = None
            raise
        return deleted

    def _wait_unused(self, graph: hnswlib.Index) -> None:
        with self._cond:
            while self._users[id(graph)]:
                self._cond.wait()

    def _commit(self, delete_ids, ids, labels, vectors, texts, attributes, mark) -> int:
        """The keyword table after a change (under ``_cond``); ``mark``: the graph to mark deletions in."""
        deleted = 0
        for kid in list(delete_ids) + list(ids):
            old = self._label.get(kid)
            if old is None:
                continue
            if mark is not None:
                mark.mark_deleted(old)
            self._forget(old)
            deleted += kid in delete_ids
        for kid, label, text, attrs, row in zip(ids, labels, texts, attributes, vectors if vectors is not None else ()):
            self._add(kid, label, text, attrs, row)
        self._hidden_from = None
        self._allowed_cache = {}
        return deleted

    def _reserve(self, n: int) -> None:
        """Grow the graph before it is full (resize copies it: geometric steps keep that rare)."""
        count, capacity = self.graph.get_current_count(), self.graph.get_max_elements()
        if count + n > capacity:
            with self._exclusive():
                self.graph.resize_index(max(count + n, int(capacity * 1.5) + 64))

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, texts: Sequence[str], attributes: Sequence[dict]) -> None:
        self.apply((), ids, vectors, texts, attributes)

    def delete(self, ids: Sequence[str]) -> int:
        return self.apply(ids, (), np.zeros((0, self.dim), dtype=np.float32), (), ())


def _write(graph: hnswlib.Index, gone: Sequence[int], labels: Sequence[int], vectors: Optional[np.ndarray]) -> None:
    """One change into a graph no search reads: marks, growth, adds (all at once)."""
    for label in gone:
        graph.mark_deleted(label)
    if labels:
        count, capacity = graph.get_current_count(), graph.get_max_elements()
        if count + len(labels) > capacity:
            graph.resize_index(max(count + len(labels), int(capacity * 1.5) + 64))
        graph.add_items(vectors, list(labels), replace_deleted=True)


# Filtered searches allowing at most this many keywords are answered by exact search over
# their vectors (a few ms at most), larger ones by the graph walk with hnswlib's filter; so are
# those needing more than EXACT_READS_MAX vectors read back from the graph (get_items: ~0.1 ms
# each; live keywords' vectors are kept beside the graph).
EXACT_FILTER_MAX = 2048
EXACT_READS_MAX = 64
EXACT_FALLBACK_READS_MAX = 20_000  # ~2 s of get_items: past it a short answer beats a stall


def _exact(index: HnswIndex, graph: hnswlib.Index, vectors: np.ndarray, labels: list[int], k: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k over ``labels``, in chunks (the caller holds the read side)."""
    best_s = np.full((len(vectors), 0), -np.inf, dtype=np.float32)
    best_l = np.zeros((len(vectors), 0), dtype=np.int64)
    for start in range(0, len(labels), 4096):
        part = np.asarray(labels[start:start + 4096], dtype=np.int64)
        scores = vectors @ index._items(part.tolist(), graph).T
        best_s = np.concatenate([best_s, scores], axis=1)
        best_l = np.concatenate([best_l, np.broadcast_to(part, scores.shape)], axis=1)
        if best_s.shape[1] > k:
            keep = np.argpartition(-best_s, k - 1, axis=1)[:, :k]
            best_s, best_l = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_l, keep, 1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_l, order, 1), np.take_along_axis(best_s, order, 1)

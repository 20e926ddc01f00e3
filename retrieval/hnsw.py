"""The embedded keyword index: an hnswlib graph over teacher keyword vectors + the keyword store.

Label ``i`` of the graph is row ``i`` of the store (``artifact/store.py``). The space is
inner product over L2-normalised vectors (``retrieval.base.SPACE``), so hnswlib's distance
is ``1 - cosine`` and a score is ``1 - distance``; both conventions live only here.
"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

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
    """The artifact's index, loaded for serving: ``retrieval.base.VectorIndex``, read and write side.

    Labels: the artifact's rows are labels ``0..n-1``; every live upsert gets a fresh label
    (monotonic, never reused: hnswlib's ``replace_deleted`` reuses the *slot* of a deleted
    element and forgets its label, so a reused label value could alias a deleted element
    still in the graph). Deleted elements stay in the graph marked deleted (never returned)
    until an add takes their slot.

    Concurrency (hnswlib's add / mark_deleted are not safe beside searches, issues #562,
    #590): searches share the graph; a write takes it alone, one element at a time so a
    query waits at most one add (~0.3-2 ms). A request's new elements are added hidden
    (labels >= ``_hidden_from`` are filtered out of every search) and made visible, together
    with its deletes, in one short exclusive step: no query sees half a request.
    """

    backend = "hnswlib"

    def __init__(self, index_path: Path, store_path: Path, dim: int, ef: int,
                 attributes_path: Optional[Path] = None, headroom: float = 0.1):
        ids, texts = read_store(store_path)
        self.dim = dim
        self.graph = hnswlib.Index(space=SPACE, dim=dim)
        self.graph.load_index(str(index_path), max_elements=len(ids), allow_replace_deleted=True)
        if self.graph.get_current_count() != len(ids):
            raise ValueError(
                f"The index holds {self.graph.get_current_count()} vectors but the keyword store has {len(ids)} rows."
            )
        if len(set(ids)) != len(ids):
            raise ValueError("the keyword store repeats an id")
        attrs = read_attributes(attributes_path, len(ids)) if attributes_path else [build_attributes(i) for i in ids]
        self.graph.set_num_threads(1)  # one query batch per worker thread; the workers are the parallelism
        # Room for live upserts without a resize (which copies the whole graph) on the first ones.
        self.graph.resize_index(len(ids) + max(1024, int(len(ids) * headroom)))
        self.default_ef = ef
        self._ef = ef
        self._id: dict[int, str] = dict(enumerate(ids))
        self._text: dict[int, str] = dict(enumerate(texts))
        self._attrs: dict[int, dict] = dict(enumerate(attrs))
        self._vec: dict[int, np.ndarray] = {}  # vectors of live upserts (reading the graph's back is slow)
        self._label: dict[str, int] = {kid: i for i, kid in enumerate(ids)}
        self._postings: dict[str, dict[tuple, set[int]]] = {}
        for label, attributes in self._attrs.items():
            self._post(label, attributes)
        self._next_label = len(ids)
        self._hidden_from: Optional[int] = None  # labels >= this are a write in progress
        self._allowed_cache: dict[str, set[int]] = {}
        # set_ef is global to the graph. Searches at the graph's current ef run side by
        # side (hnswlib searches are thread-safe); one at another ef waits until no
        # search is running, then changes it. A write waits until no search runs.
        self._cond = threading.Condition(threading.Lock())
        self._searching = 0
        self._waiting = 0  # searches waiting to start
        self._writing = False
        self._writer = threading.Lock()  # one writer at a time (the live ingest thread)
        self.graph.set_ef(ef)

    def __len__(self) -> int:
        return len(self._id)

    # ---- the keyword table beside the graph ----

    def _post(self, label: int, attributes: dict) -> None:
        for name, value in attributes.items():
            self._postings.setdefault(name, {}).setdefault(value_key(value), set()).add(label)

    def _forget(self, label: int) -> None:
        self._vec.pop(label, None)
        for name, value in self._attrs.pop(label, {}).items():
            self._postings[name][value_key(value)].discard(label)
        del self._label[self._id.pop(label)]
        del self._text[label]

    def get(self, keyword_id: str) -> Optional[tuple[str, dict]]:
        """(text, attributes) of a live keyword, None if absent."""
        with self._reading(None):
            label = self._label.get(keyword_id)
            if label is None:
                return None
            return self._text[label], dict(self._attrs[label])

    def keywords(self) -> list[tuple[str, str, dict]]:
        """(id, text, attributes) of every live keyword, in label order (a copy: safe beside writes)."""
        with self._reading(None):
            return [(self._id[label], self._text[label], dict(self._attrs[label])) for label in sorted(self._id)]

    def vectors_of(self, keyword_ids: Sequence[str]) -> np.ndarray:
        labels = [self._label[k] for k in keyword_ids]
        with self._reading(None):
            return self._items(labels)

    def _items(self, labels: Sequence[int]) -> np.ndarray:
        out = np.empty((len(labels), self.dim), dtype=np.float32)
        read = [i for i, label in enumerate(labels) if label not in self._vec]
        for i, label in enumerate(labels):
            if label in self._vec:
                out[i] = self._vec[label]
        if read:  # hnswlib's get_items costs ~0.1 ms a vector: only for the artifact's own rows
            out[read] = np.asarray(self.graph.get_items([int(labels[i]) for i in read], return_type="numpy"))
        return out

    def verify(self) -> None:
        """Stored vectors are L2-normalised: norms away from 1 mean the graph was read with
        the wrong dimension (hnswlib does not check it) and would answer nonsense."""
        labels = sorted(self._id)
        if not labels:
            return
        probe = sorted({labels[0], labels[len(labels) // 2], labels[-1]})
        norms = np.linalg.norm(self._items(probe), axis=1)
        if not np.allclose(norms, 1.0, atol=1e-2):
            raise ValueError(f"it does not hold {self.dim}-d unit vectors (norms {', '.join(f'{x:.3f}' for x in norms)}): "
                             "its dimension does not match the manifest")

    # ---- read side ----

    @contextmanager
    def _reading(self, ef: Optional[int]) -> Iterator[Optional[int]]:
        """Share the graph with other searches (at ``ef`` if given); yields the hidden-from label."""
        with self._cond:
            self._waiting += 1
            while self._writing or (ef is not None and ef != self._ef and self._searching):
                self._cond.wait()
            self._waiting -= 1
            if ef is not None and ef != self._ef:
                self.graph.set_ef(ef)
                self._ef = ef
            self._searching += 1
            hidden = self._hidden_from
        try:
            yield hidden
        finally:
            with self._cond:
                self._searching -= 1
                if not self._searching:
                    self._cond.notify_all()

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        with self._cond:
            # Searches first: a writer going straight from one add to the next would otherwise
            # re-take the graph before a woken search gets to it, and hold it for the whole change.
            while self._writing or self._searching or self._waiting:
                self._cond.wait()
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()

    def search_labels(self, vectors: np.ndarray, k: int, ef: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(labels, scores) of shape [n, k'] with k' = min(k, size), best first (no filter)."""
        k = min(k, len(self._id))
        ef = max(ef or self.default_ef, k)  # hnswlib needs ef >= k
        with self._reading(ef) as hidden:
            return self._knn(vectors, k, None, hidden)

    def _knn(self, vectors: np.ndarray, k: int, allowed: Optional[set[int]], hidden: Optional[int]
             ) -> tuple[np.ndarray, np.ndarray]:
        """Search restricted to ``allowed`` labels (None: every live one), inside the ANN search.

        Few allowed labels: exact search over just their vectors (exact, and cheaper than a
        graph walk that must skip almost everything). Otherwise the graph walk, with
        hnswlib's filter callable, so the walk goes on until it has k allowed hits. The
        caller holds the read side. ``allowed`` sets hold committed labels only; without
        one, labels of a write in progress (>= ``hidden``) are filtered out."""
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
                labels, distances = self.graph.knn_query(vectors, k=k, filter=keep)
                return labels, 1.0 - distances
            except RuntimeError:  # the walk found fewer than k (a graph cut by deletes): exact below
                pass
        pool = self._id.keys() if allowed is None else allowed
        if len(pool - self._vec.keys()) > EXACT_FALLBACK_READS_MAX:
            # Exact search would read too many vectors back from the graph: the best the walk
            # finds, fewer than k (hnswlib only raises when it finds fewer than asked).
            while k > 1:
                k //= 2
                try:
                    labels, distances = self.graph.knn_query(vectors, k=k, filter=keep)
                    return labels, 1.0 - distances
                except RuntimeError:
                    continue
            return np.zeros((n, 0), dtype=np.int64), np.zeros((n, 0), dtype=np.float32)
        return _exact(self, vectors, sorted(pool), k)

    def allowed(self, flt: dict) -> set[int]:
        """Labels whose attributes match ``flt`` (equality; a list is "any of"; missing: no match)."""
        key = json.dumps(flt, sort_keys=True)
        hit = self._allowed_cache.get(key)
        if hit is not None:
            return hit
        result: Optional[set[int]] = None
        for name, want in flt.items():
            values = want if isinstance(want, list) else [want]
            posting = self._postings.get(name, {})
            matching = set().union(*(posting.get(value_key(v), ()) for v in values))
            result = matching if result is None else result & matching
            if not result:
                break
        result = result or set()
        if len(self._allowed_cache) >= 256:
            self._allowed_cache.clear()
        self._allowed_cache[key] = result
        return result

    def search(self, vectors: np.ndarray, params: SearchParams) -> list[list[Hit]]:
        k = min(params.k, len(self._id))
        ef = max(params.ef or self.default_ef, k)
        with self._reading(ef) as hidden:  # hits are read inside: a commit may drop their labels after
            allowed = self.allowed(params.filter) if params.filter else None
            labels, scores = self._knn(vectors, params.k, allowed, hidden)
            ids, texts = self._id, self._text
            return [
                [Hit(ids[l], texts[l], float(s)) for l, s in zip(row_labels, row_scores)]
                for row_labels, row_scores in zip(labels.tolist(), scores.tolist())
            ]

    # ---- write side (one writer) ----

    def apply(self, delete_ids: Sequence[str], ids: Sequence[str], vectors: np.ndarray, texts: Sequence[str],
              attributes: Sequence[dict]) -> int:
        """Delete ``delete_ids`` and upsert the rest as one change no search sees half-done.

        Returns how many of ``delete_ids`` were present. Checks everything before touching
        the graph, so a refused change leaves the index as it was."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim) if len(ids) else None
        if not (len(ids) == len(texts) == len(attributes)):
            raise ValueError("ids, texts and attributes differ in length")
        if len(set(ids)) != len(ids) or set(ids) & set(delete_ids):
            raise ValueError("an id appears twice in one change")
        if vectors is not None and not np.isfinite(vectors).all():
            raise ValueError("a vector is not finite")
        with self._writer:
            if ids:
                self._reserve(len(ids))
                first = self._next_label
                labels = list(range(first, first + len(ids)))
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
                deleted = 0
                for kid in list(delete_ids) + list(ids):
                    old = self._label.get(kid)
                    if old is None:
                        continue
                    self.graph.mark_deleted(old)
                    self._forget(old)
                    deleted += kid in delete_ids
                for kid, label, text, attrs, row in zip(ids, range(self._next_label - len(ids), self._next_label),
                                                        texts, attributes, vectors if vectors is not None else ()):
                    self._id[label], self._text[label], self._attrs[label] = kid, text, dict(attrs)
                    self._vec[label] = row
                    self._label[kid] = label
                    self._post(label, attrs)
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


# Filtered searches allowing at most this many keywords are answered by exact search over
# their vectors (a few ms at most), larger ones by the graph walk with hnswlib's filter; so are
# those needing more than EXACT_READS_MAX vectors read back from the graph (get_items: ~0.1 ms
# each; live keywords' vectors are kept beside the graph).
EXACT_FILTER_MAX = 2048
EXACT_READS_MAX = 64
EXACT_FALLBACK_READS_MAX = 20_000  # ~2 s of get_items: past it a short answer beats a stall


def _exact(index: HnswIndex, vectors: np.ndarray, labels: list[int], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k over ``labels``, in chunks (the caller holds the read side)."""
    best_s = np.full((len(vectors), 0), -np.inf, dtype=np.float32)
    best_l = np.zeros((len(vectors), 0), dtype=np.int64)
    for start in range(0, len(labels), 4096):
        part = np.asarray(labels[start:start + 4096], dtype=np.int64)
        scores = vectors @ index._items(part.tolist()).T
        best_s = np.concatenate([best_s, scores], axis=1)
        best_l = np.concatenate([best_l, np.broadcast_to(part, scores.shape)], axis=1)
        if best_s.shape[1] > k:
            keep = np.argpartition(-best_s, k - 1, axis=1)[:, :k]
            best_s, best_l = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_l, keep, 1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_l, order, 1), np.take_along_axis(best_s, order, 1)


# ---- attributes ----

ATTRIBUTES_HEADER = "hlm-attributes-v1"


def build_attributes(keyword_id: str) -> dict:
    """What the build's data says about a keyword: its source, the id's prefix ("hd", "mq")."""
    prefix, sep, _ = keyword_id.partition(":")
    return {"source": prefix} if sep and prefix else {}


def value_key(value: Any) -> tuple:
    """Equality key of an attribute value: True and 1 differ (a JSON boolean is not a number),
    1 and 1.0 do not."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, (int, float)):
        return ("n", value)
    return ("s", value)


def read_attributes(path: Path, rows: int) -> list[dict]:
    """``index/attributes.jsonl`` (written by ``hlm compact``): a header line, then one JSON object per store row."""
    with open(path, encoding="utf-8") as handle:
        if handle.readline().strip() != json.dumps(ATTRIBUTES_HEADER):
            raise ValueError(f"{path} does not start with the header {ATTRIBUTES_HEADER!r}")
        out = [json.loads(line) for line in handle]
    if len(out) != rows or not all(isinstance(a, dict) for a in out):
        raise ValueError(f"{path} has {len(out)} attribute rows but the keyword store has {rows}")
    return out


def write_attributes(path: Path, attributes: Iterable[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(ATTRIBUTES_HEADER) + "\n")
        for attrs in attributes:
            handle.write(json.dumps(attrs, ensure_ascii=False, sort_keys=True) + "\n")

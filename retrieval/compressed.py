"""The compressed keyword index: small codes in memory, full vectors on disk for re-ranking.

Why (issue #24): hnswlib keeps every keyword's 768 floats and its graph links in RAM, ~3.3 KB
a keyword, so one 24 GiB machine holds ~6M keywords. Here RAM holds only a faiss inverted-file
index over compressed codes (the factory string in the manifest, e.g. ``IVF256,PQ96x4fs``:
48 bytes of code a keyword, scanned with SIMD "fast-scan" tables), and the full vectors stay
in a file that is memory-mapped and read only for the few candidates each query re-ranks
(the SPANN / DiskANN pattern: approximate in memory, exact from storage).

A search, per query: the IVF scan of ``nprobe`` lists gives ``max(ef, k)`` candidates by
their approximate scores; their float32 vectors are scored exactly (the scores hnswlib would
give) and the best k returned. So ``ef`` means here what it means for hnswlib: the candidate
list a query keeps, and its answer's quality grows with it.

Why the stored precision is a build choice (session 11): float32 re-ranks fastest (16 us for
the gather and product of 128 candidates x 768, against ~80 us to widen float16 rows first,
through faiss' SIMD fp16 decoder; numpy's own conversion, 120 us, has no SIMD path) but costs
3 KB a keyword of file, and the re-rank's random reads must hit the page cache. At 10M on a
24 GiB machine the 31 GB float32 file did not fit: 284 ms a query, against 1.6 ms with the
15 GB float16 file (docs/BENCHMARKS.md "Session 10"). So ``choose_precision`` writes float32
while that file fits in half this machine's RAM and float16 past it; the file's suffix says
which (``vectors.f32`` / ``vectors.f16``), and the service warns at start-up when the file
outgrows the machine it runs on.

Why few lists (session 10, the full artifact's 113k keywords, real student queries): the
student's queries do not sit inside the keywords' clusters, so their true neighbours spread
over many lists; with 1,024 lists and nprobe 32 only 83% of the true top 10 lay in the lists
scanned, whatever the re-rank. Fewer, larger lists with half of them scanned reach hnswlib's
recall (IVF256, nprobe 128, 128 candidates: recall@10 0.971 against hnswlib ef 64's 0.962;
docs/BENCHMARKS.md "Session 10").

Files (the artifact's ``index/`` folder, all in the manifest): ``keywords.faiss`` (the trained
index; ids = labels = store rows), ``vectors.f32`` (row ``i`` = label ``i``, float32, raw),
``keywords.tsv`` (the store, as for hnswlib); ``vectors.f16`` where the build chose float16.

Live changes: an upsert adds the new vector's code under a fresh label (labels are never
reused, as in ``retrieval.hnsw``) and keeps its full vector in memory for re-ranking; a
delete removes the label's code from the index. Searches share the index; a change holds it
alone for the few microseconds faiss needs to add or remove codes (faiss' writes are not
safe beside its searches).
"""

from __future__ import annotations

import json
import logging
import math
import mmap
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import faiss
import numpy as np

from artifact.store import read_store
from retrieval.base import Hit, SearchParams
from retrieval.keyword_table import KeywordTable

log = logging.getLogger(__name__)

# The stored vectors' file by precision; its suffix is what a reader goes by.
VECTOR_FILES = {"float32": "vectors.f32", "float16": "vectors.f16"}
VECTOR_DTYPES = {".f32": np.float32, ".f16": np.float16}
PRECISIONS = ("auto", *VECTOR_FILES)
# Filtered searches allowing at most this many keywords are answered exactly over their vectors.
EXACT_FILTER_MAX = 4096


def default_factory(rows: int) -> str:
    """The index for ``rows`` keywords: about sqrt(n) inverted lists, a power of two, with at
    least 39 keywords a list (k-means' least points per centroid); 96 4-bit sub-quantisers
    (48 B of code a keyword). (Session 9 used 4 sqrt(n): IVF1024 at 113k, where the student's
    queries found only 83% of their true neighbours in the 32 lists scanned.)"""
    lists = 2 ** max(0, math.floor(math.log2(max(1.0, min(math.sqrt(rows), rows / 39)))))
    return f"IVF{lists},PQ96x4fs"


SCAN_BUDGET = 65_536  # codes a query scans by default: ~0.3 ms of fast-scan on one core here


def default_nprobe(lists: int, rows: int) -> int:
    """Lists scanned a query: a power of two scanning about SCAN_BUDGET codes, at most half the
    lists. At 113k (IVF256, 442 a list) that is 128, half, recall@10 0.967 on the student's
    queries; at 10M (IVF2048) it is 8 lists, 0.4% of the codes: the time stays flat, the recall
    on queries far from the keywords' clusters falls, and ``index_nprobe`` raises it."""
    per_list = max(1.0, rows / max(1, lists))
    budget = 2 ** max(0, math.floor(math.log2(max(1.0, SCAN_BUDGET / per_list))))
    return max(1, min(budget, lists // 2))


def ram_bytes() -> int:
    """This machine's physical memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_precision(precision: str) -> None:
    """ValueError, in one sentence, for a name that is not one of PRECISIONS."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown vector precision {precision!r}; choose one of {', '.join(PRECISIONS)}")


def choose_precision(rows: int, dim: int, precision: str = "auto", ram: Optional[int] = None) -> str:
    """``precision`` itself, or for "auto": float32 while its file fits in half of ``ram``
    (default: this machine's), float16 past that (the re-rank must read from the page cache)."""
    check_precision(precision)
    if precision != "auto":
        return precision
    return "float32" if rows * dim * 4 <= (ram or ram_bytes()) // 2 else "float16"


def vector_dtype(path: Path) -> type:
    try:
        return VECTOR_DTYPES[Path(path).suffix]
    except KeyError:
        raise ValueError(f"{Path(path).name}: the stored vectors' file must end in .f32 or .f16") from None


def _enough_to_train(index: "faiss.Index", train_rows: int) -> int:
    """At least 40 training points an inverted list: faiss' k-means wants 39 a centroid (at 10M
    keywords, IVF8192, the 200,000 default was 24 a list and faiss warned)."""
    return max(train_rows, 40 * int(faiss.extract_index_ivf(index).nlist))


def build_compressed(vectors: np.ndarray, folder: Path, factory: Optional[str] = None, *, train_rows: int = 200_000,
                     threads: int = 2, seed: int = 100, precision: str = "auto") -> dict[str, Any]:
    """Train and fill the index over ``vectors`` (L2-normalised, row = label) and write
    ``keywords.faiss`` and the vectors' file (``choose_precision``) into ``folder``; returns the
    manifest's index fields."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    rows = len(vectors)

    def sample(wanted: int) -> np.ndarray:
        if rows <= wanted:
            return vectors
        # a fixed seed keeps the artifact's checksum reproducible
        return vectors[np.sort(np.random.default_rng(seed).choice(rows, wanted, replace=False))]

    return build_compressed_chunks(lambda: iter([vectors]), rows, vectors.shape[1], folder, factory, sample=sample,
                                   train_rows=train_rows, threads=threads, seed=seed, precision=precision)


def build_compressed_chunks(chunks: Callable[[], Iterator[np.ndarray]], rows: int, dim: int, folder: Path,
                            factory: Optional[str] = None, *, sample: Optional[Callable[[int], np.ndarray]] = None,
                            train_rows: int = 200_000, threads: int = 2, seed: int = 100,
                            precision: str = "auto") -> dict[str, Any]:
    """The same from a sequence of chunks (``chunks()`` yields them in label order; called twice
    when no training ``sample(rows wanted)`` is given: once for the first rows as the sample), so
    a keyword set larger than RAM as float32 (10M x 768 = 31 GB) is built streaming."""
    factory = factory or default_factory(rows)
    precision = choose_precision(rows, dim, precision)
    vector_file = VECTOR_FILES[precision]
    faiss.omp_set_num_threads(threads)
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    train_rows = _enough_to_train(index, train_rows)
    if sample is not None:
        training = sample(train_rows)
    else:
        parts, have = [], 0
        for chunk in chunks():
            parts.append(np.asarray(chunk, dtype=np.float32)[: train_rows - have])
            have += len(parts[-1])
            if have >= train_rows:
                break
        training = np.concatenate(parts)
    faiss.extract_index_ivf(index).cp.seed = seed
    index.train(np.ascontiguousarray(training, dtype=np.float32))
    added = 0
    with open(Path(folder) / vector_file, "wb") as out:
        for chunk in chunks():
            chunk = np.ascontiguousarray(chunk, dtype=np.float32)
            index.add_with_ids(chunk, np.arange(added, added + len(chunk), dtype=np.int64))
            out.write(chunk.astype(precision, copy=False).tobytes())
            added += len(chunk)
    if added != rows:
        raise ValueError(f"the chunks held {added} vectors, not {rows}")
    faiss.write_index(index, str(Path(folder) / "keywords.faiss"))
    return {"factory": factory, "code_bytes": int(index.sa_code_size()), "lists": int(faiss.extract_index_ivf(index).nlist),
            "vectors": f"index/{vector_file}", "precision": precision}


class CompressedVectors:
    """The search itself, labels in and out: the faiss scan over codes, then the exact re-rank
    from the full vectors. No keyword table and no locking (``CompressedIndex`` adds both);
    the scale benchmark times this alone against hnswlib's ``knn_query``."""

    def __init__(self, index_path: Path, vectors_path: Path, rows: int, dim: int, nprobe: int):
        self.index = faiss.read_index(str(index_path))
        if self.index.d != dim:
            raise ValueError(f"the faiss index holds {self.index.d}-d codes, not {dim}-d")
        if self.index.ntotal != rows:
            raise ValueError(f"the faiss index holds {self.index.ntotal} codes but the keyword store has {rows} rows")
        dtype = np.dtype(vector_dtype(vectors_path))
        expected = rows * dim * dtype.itemsize
        size = Path(vectors_path).stat().st_size
        if size != expected:
            raise ValueError(f"{Path(vectors_path).name} has {size} bytes, not the {expected} of {rows} x {dim} {dtype.name}")
        # A plain array over a read-only map of the file (np.memmap's subclass costs ~10x more a
        # fancy-indexed gather than a plain array, and a query gathers its candidates' rows).
        with open(vectors_path, "rb") as handle:
            self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        self.vectors = (np.frombuffer(self._map, dtype=dtype).reshape(rows, dim) if self._map is not None
                        else np.zeros((0, dim), dtype=dtype))
        # float16 rows are widened by faiss' fp16 decoder (SIMD; numpy's conversion is scalar)
        self._fp16 = None
        if dtype == np.float16:
            self._fp16 = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        ram = ram_bytes()
        if size > ram // 2:
            log.warning("%s is %.1f GB, more than half this machine's %.1f GB of RAM: the re-rank's reads may go to "
                        "disk (docs/SCALE.md)", Path(vectors_path).name, size / 1e9, ram / 1e9)
        self.rows, self.dim, self.nprobe = rows, dim, nprobe
        self.extra: dict[int, np.ndarray] = {}  # full vectors of live upserts (not in the file)
        self._params: dict[int, Any] = {}  # faiss search parameters per nprobe, made once
        faiss.omp_set_num_threads(1)  # one query batch per thread; the service's threads are the parallelism

    def full(self, labels: np.ndarray) -> np.ndarray:
        """Full vectors of labels (float32): the file's rows from the map, live upserts (labels
        past the file: an upsert always gets a new label) from memory."""
        labels = np.asarray(labels, dtype=np.int64)
        live = labels >= self.rows
        if not live.any():
            return self._widen(self.vectors[labels])
        out = np.empty((len(labels), self.dim), dtype=np.float32)
        out[~live] = self._widen(self.vectors[labels[~live]])
        for i in np.flatnonzero(live).tolist():
            out[i] = self.extra[int(labels[i])]
        return out

    def _widen(self, rows: np.ndarray) -> np.ndarray:
        """Stored rows as float32."""
        if self._fp16 is None:
            return rows
        if not len(rows):
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._fp16.sa_decode(np.ascontiguousarray(rows).view(np.uint8))

    def candidates(self, vectors: np.ndarray, count: int, selector=None) -> np.ndarray:
        """[n, count] labels by approximate score (-1 where the scanned lists ran short)."""
        params = self._params.get(self.nprobe) if selector is None else None
        if params is None:
            params = faiss.SearchParametersIVF(nprobe=self.nprobe, sel=selector) if selector is not None else \
                faiss.SearchParametersIVF(nprobe=self.nprobe)
            if selector is None:
                self._params[self.nprobe] = params
        return self.index.search(vectors, count, params=params)[1]

    def rerank(self, vectors: np.ndarray, rows: Sequence[np.ndarray], k: int) -> list[list[tuple[int, float]]]:
        """Each query's best k of its candidate labels by exact inner product, best first."""
        out = []
        for query, labels in zip(vectors, rows):
            labels = np.asarray(labels, dtype=np.int64)
            labels = labels[labels >= 0]
            if not len(labels):
                out.append([])
                continue
            scores = self.full(labels) @ query
            if len(scores) > k:
                top = np.argpartition(-scores, k - 1)[:k]
                top = top[np.argsort(-scores[top], kind="stable")]
            else:
                top = np.argsort(-scores, kind="stable")
            out.append(list(zip(labels[top].tolist(), scores[top].tolist())))
        return out

    def search_labels(self, vectors: np.ndarray, k: int, candidates: int) -> list[list[tuple[int, float]]]:
        """(label, score) of the best k per query, from ``candidates`` re-ranked (every label live)."""
        return self.rerank(vectors, self.candidates(vectors, max(candidates, k)), k)

    def memory_bytes(self) -> int:
        """RAM of the compressed index: faiss' codes and ids, and its centroids."""
        ivf = faiss.extract_index_ivf(self.index)
        codes = sum(ivf.invlists.list_size(i) for i in range(ivf.nlist)) * (ivf.code_size + 8)
        return int(codes + ivf.nlist * self.dim * 4)


class CompressedIndex(KeywordTable):
    """``retrieval.base.VectorIndex`` over the files above: read and write side."""

    backend = "faiss"

    def __init__(self, index_path: Path, vectors_path: Path, store_path: Path, dim: int, ef: int, nprobe: int,
                 attributes_path: Optional[Path] = None):
        ids, texts = read_store(store_path)
        self._init_table(ids, texts, attributes_path)
        self.dim = dim
        self.default_ef = ef
        self.core = CompressedVectors(index_path, vectors_path, len(ids), dim, nprobe)
        self.core.extra = self._vec  # live upserts' full vectors: the table keeps them, the re-rank reads them
        self.index = self.core.index
        self.rows = len(ids)
        self._selectors: dict[str, Any] = {}  # filter -> faiss bitmap selector over its labels
        # Readers share the faiss index; a writer holds it alone (faiss add/remove beside a search is unsafe).
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writing = False
        self._writer = threading.Lock()

    def vectors_of(self, keyword_ids: Sequence[str]) -> np.ndarray:
        with self._cond:
            labels = [self._label[k] for k in keyword_ids]
        return self._full(labels)

    def _full(self, labels: Sequence[int]) -> np.ndarray:
        return self.core.full(labels)

    def verify(self) -> None:
        """The stored vectors are unit length (a file of another dimension or dtype is not)."""
        if not self.rows:
            return
        probe = sorted({0, self.rows // 2, self.rows - 1})
        norms = np.linalg.norm(self._full(probe), axis=1)
        if not np.allclose(norms, 1.0, atol=1e-2):
            raise ValueError(f"its vectors are not {self.dim}-d unit vectors (norms {', '.join(f'{x:.3f}' for x in norms)})")

    # ---- read side ----

    @contextmanager
    def _reading(self) -> Iterator[None]:
        with self._cond:
            while self._writing:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        with self._cond:
            self._writing = True  # new readers wait: a steady stream of searches cannot starve a write
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()

    def _allowed(self, flt: dict) -> tuple[set[int], Any]:
        """(labels matching ``flt``, a faiss bitmap selector over them when they are many);
        call under ``_cond``."""
        allowed = self.allowed(flt)
        if len(allowed) <= EXACT_FILTER_MAX:
            return allowed, None
        key = json.dumps(flt, sort_keys=True)
        selector = self._selectors.get(key)
        if selector is None:
            bits = np.zeros((self._next_label + 7) // 8, dtype=np.uint8)
            labels = np.fromiter(allowed, dtype=np.int64, count=len(allowed))
            np.bitwise_or.at(bits, labels >> 3, (1 << (labels & 7)).astype(np.uint8))
            selector = self._selectors[key] = (faiss.IDSelectorBitmap(self._next_label, faiss.swig_ptr(bits)), bits)
            if len(self._selectors) > 256:
                self._selectors.clear()
        return allowed, selector

    def search(self, vectors: np.ndarray, params: SearchParams) -> list[list[Hit]]:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        k = min(params.k, len(self._id))
        if k <= 0:
            return [[] for _ in range(len(vectors))]
        candidates = max(params.ef or self.default_ef, k)
        allowed, selector = None, None
        with self._reading():
            if params.filter:
                with self._cond:
                    allowed, selector = self._allowed(params.filter)
                if not allowed:
                    return [[] for _ in range(len(vectors))]
            if allowed is not None and selector is None:  # few keywords match: exact over them
                labels = np.asarray(sorted(allowed), dtype=np.int64)
                found = np.broadcast_to(labels, (len(vectors), len(labels)))
            else:
                # the scan and the table agree: a change takes both under the exclusive side
                found = self.core.candidates(vectors, candidates, selector[0] if selector else None)
            out = self.core.rerank(vectors, found, k)
        with self._cond:  # a label a change removed meanwhile is left out
            return [[Hit(self._id[label], self._text[label], score) for label, score in hits if label in self._id]
                    for hits in out]

    # ---- write side (one writer) ----

    def apply(self, delete_ids: Sequence[str], ids: Sequence[str], vectors: np.ndarray, texts: Sequence[str],
              attributes: Sequence[dict]) -> int:
        """Delete ``delete_ids`` and upsert the rest as one change no search sees half-done."""
        vectors = self._checked_change(delete_ids, ids, vectors, texts, attributes)
        with self._writer:
            first = self._next_label
            labels = list(range(first, first + len(ids)))
            with self._cond:
                gone = [self._label[k] for k in list(delete_ids) + list(ids) if k in self._label]
            with self._exclusive():
                if gone:
                    self.index.remove_ids(np.asarray(gone, dtype=np.int64))
                if labels:
                    self.index.add_with_ids(vectors, np.asarray(labels, dtype=np.int64))
                self._next_label = first + len(ids)
                with self._cond:
                    deleted = 0
                    for kid in list(delete_ids) + list(ids):
                        old = self._label.get(kid)
                        if old is not None:
                            self._forget(old)
                            deleted += kid in delete_ids
                    for kid, label, text, attrs, row in zip(ids, labels, texts, attributes,
                                                            vectors if vectors is not None else ()):
                        self._add(kid, label, text, attrs, row.copy())
                    self._allowed_cache, self._selectors = {}, {}
            return deleted

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, texts: Sequence[str], attributes: Sequence[dict]) -> None:
        self.apply((), ids, vectors, texts, attributes)

    def delete(self, ids: Sequence[str]) -> int:
        return self.apply(ids, (), np.zeros((0, self.dim), dtype=np.float32), (), ())

    def memory_bytes(self) -> int:
        """RAM of the compressed index itself (not the keyword table)."""
        return self.core.memory_bytes()

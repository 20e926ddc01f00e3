"""An encoder and an index that stand in for the teacher and hnswlib/Milvus in the live tests,
with switches that make the index fail the way a remote one does (and a thread log)."""

from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass

import numpy as np


@dataclass
class _Encoded:
    vectors: np.ndarray


class FakeEncoder:
    """Unit vectors seeded by the text: the same text, the same vector, in any batch."""

    def __init__(self, dim: int = 8):
        self.dim = dim

    def encode(self, texts):
        rows = [np.random.default_rng(zlib.crc32(t.encode())).standard_normal(self.dim) for t in texts]
        vectors = np.asarray(rows, dtype=np.float32).reshape(len(texts), self.dim)
        return _Encoded(vectors / np.linalg.norm(vectors, axis=1, keepdims=True))


class IndexDown(Exception):
    """What a remote index raises while it cannot answer."""


class DictIndex:
    """id -> (text, attributes, vector); ``down`` makes every call fail, ``len_fails`` only len()."""

    backend = "fake"

    def __init__(self, dim: int = 8, rows: dict | None = None):
        self.dim = dim
        self.rows: dict[str, tuple] = dict(rows or {})
        self.down = False
        self.len_fails = False
        self.len_threads: set[int] = set()
        self.applied: list[tuple] = []  # (delete ids, upsert ids) per apply, in order

    def apply(self, delete_ids, ids, vectors, texts, attributes) -> int:
        if self.down:
            raise IndexDown("the fake index is down")
        deleted = sum(self.rows.pop(k, None) is not None for k in delete_ids)
        for i, kid in enumerate(ids):
            self.rows.pop(kid, None)
            self.rows[kid] = (texts[i], dict(attributes[i]), np.asarray(vectors[i], dtype=np.float32))
        self.applied.append((list(delete_ids), list(ids)))
        return deleted

    def get(self, keyword_id):
        if self.down:
            raise IndexDown("the fake index is down")
        row = self.rows.get(keyword_id)
        return None if row is None else (row[0], row[1])

    def __len__(self) -> int:
        self.len_threads.add(threading.get_ident())
        if self.down or self.len_fails:
            raise IndexDown("count(*) failed")
        return len(self.rows)

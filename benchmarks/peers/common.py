"""What the peers share: the artifact's hnswlib index + keyword store, and the search JSON shape.

Deliberately plain (hnswlib used directly, as a user would): the product's index wrapper
(``retrieval.hnsw.HnswIndex``) is not used, so its concurrency handling gets no credit
in the peers' numbers. Only the keyword-store reader is shared, to read the same file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from pydantic import BaseModel, Field

from artifact.store import read_store


class SearchIn(BaseModel):
    """The product's single-query request shape (the fields the harness sends)."""

    query: str = Field(min_length=1)
    k: int = Field(10, ge=1, le=100)
    encoder: Literal["student"] = "student"
    ef: Optional[int] = Field(None, ge=1, le=4096)


class PeerIndex:
    """hnswlib graph + keyword store from an artifact folder (label i == store row i)."""

    def __init__(self, index_path: Path | str, store_path: Path | str, dim: int, ef: int):
        import hnswlib

        self.ids, self.texts = read_store(Path(store_path))
        self.graph = hnswlib.Index(space="ip", dim=dim)
        self.graph.load_index(str(index_path), max_elements=len(self.ids))
        self.graph.set_num_threads(1)
        self.graph.set_ef(ef)
        self.ef = ef

    @classmethod
    def from_artifact(cls, artifact: Path | str) -> "PeerIndex":
        from artifact.manifest import verify

        artifact = Path(artifact)
        manifest = verify(artifact, checksums=False)
        index = manifest["index"]
        return cls(artifact / index["path"], artifact / index["store"], int(index["dim"]), int(index.get("ef", 64)))

    def search(self, vector: np.ndarray, k: int) -> list[dict]:
        """Top-k keywords of one query vector, best first, in the product's keyword shape."""
        k = min(k, len(self.ids))
        if self.ef < k:  # hnswlib needs ef >= k; the peers never change ef at run time otherwise
            self.graph.set_ef(k)
            self.ef = k
        labels, distances = self.graph.knn_query(np.asarray(vector, dtype=np.float32).reshape(1, -1), k=k)
        return [{"id": self.ids[l], "text": self.texts[l], "score": float(1.0 - d)}
                for l, d in zip(labels[0].tolist(), distances[0].tolist())]


def search_response(query: str, keywords: list[dict], k: int) -> dict:
    """``{"results": [{"query", "truncated", "keywords"}], "k"}``, the product's shape (no timings)."""
    return {"encoder": "student", "k": k, "results": [{"query": query, "truncated": False, "keywords": keywords}]}


def set_offline_env() -> None:
    """Nothing is downloaded at run time: the hub libraries are told so before they load."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(name, "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("INFINITY_ANONYMOUS_USAGE_STATS", "0")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

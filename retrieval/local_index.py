"""The artifact's own keyword index, opened from its manifest's ``index`` fields: the hnswlib
graph or, for ``library: faiss``, the compressed index. One place for both readers: the
service (``service.runtime.open_index``) and ``hlm compact``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retrieval.hnsw import HnswIndex


def open_local_index(root: Path, idx: dict[str, Any], ef: int, *, double_buffer: bool = False):
    attributes = root / idx["attributes"] if idx.get("attributes") else None
    if idx.get("library") == "faiss":
        from retrieval.compressed import CompressedIndex  # faiss loads only for an artifact that needs it

        return CompressedIndex(root / idx["path"], root / idx["vectors"], root / idx["store"], int(idx["dim"]), ef,
                               int(idx["nprobe"]), attributes_path=attributes)
    return HnswIndex(root / idx["path"], root / idx["store"], int(idx["dim"]), ef, attributes_path=attributes,
                     double_buffer=double_buffer)

"""On-disk cache of text embeddings, keyed by model and text, so nothing is encoded twice.

One SQLite file per model key (the hash of the model's weights), rows keyed by the sha1
of the text, vectors stored as float32 bytes. SQLite makes each committed batch durable:
a build killed mid-way resumes from the last committed batch.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from artifact.manifest import sha256_file
from models.model_files import CACHE_DIR


def _key(text: str) -> bytes:
    return hashlib.sha1(text.encode("utf-8")).digest()


class EmbeddingCache:
    def __init__(self, model_key: str, dim: int, cache_dir: Path | None = None):
        folder = (cache_dir or CACHE_DIR) / "embeddings"
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{model_key}.sqlite"
        self.dim = dim
        self.db = sqlite3.connect(self.path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS vectors (key BLOB PRIMARY KEY, vector BLOB NOT NULL)")

    def get_many(self, texts: Sequence[str]) -> dict[int, np.ndarray]:
        """Cached vectors by position in ``texts``."""
        found: dict[int, np.ndarray] = {}
        positions: dict[bytes, list[int]] = {}
        for i, text in enumerate(texts):
            positions.setdefault(_key(text), []).append(i)
        keys = list(positions)
        for start in range(0, len(keys), 900):  # SQLite's bound-parameter limit
            chunk = keys[start : start + 900]
            marks = ",".join("?" * len(chunk))
            for key, blob in self.db.execute(f"SELECT key, vector FROM vectors WHERE key IN ({marks})", chunk):
                vector = np.frombuffer(blob, dtype=np.float32)
                if vector.shape[0] == self.dim:
                    for i in positions[key]:
                        found[i] = vector
        return found

    def put_many(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        rows = [(_key(t), np.asarray(v, dtype=np.float32).tobytes()) for t, v in zip(texts, vectors)]
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?)", rows)

    def encode(
        self,
        texts: Sequence[str],
        encode_fn: Callable[[Sequence[str]], np.ndarray],
        chunk: int = 1024,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Vectors for all ``texts``: cached ones read, missing ones encoded and stored.

        Missing texts are encoded in chunks, each committed before the next starts.
        """
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        cached = self.get_many(texts)
        for i, vector in cached.items():
            out[i] = vector
        if progress and cached:
            progress(len(cached))
        missing_text: dict[str, list[int]] = {}
        for i, text in enumerate(texts):
            if i not in cached:
                missing_text.setdefault(text, []).append(i)
        todo = list(missing_text)
        for start in range(0, len(todo), chunk):
            batch = todo[start : start + chunk]
            vectors = encode_fn(batch)
            self.put_many(batch, vectors)
            for text, vector in zip(batch, vectors):
                for i in missing_text[text]:
                    out[i] = vector
            if progress:
                progress(sum(len(missing_text[t]) for t in batch))
        return out

    def close(self) -> None:
        self.db.close()


def model_key(name: str, folder: Path, max_length: int) -> str:
    """The cache key of a model folder: its weights' digest and the token limit."""
    marker = folder / ".complete"
    digest = marker.read_text().strip() if marker.is_file() else sha256_file(folder / "model.safetensors")
    return f"{name}-{digest[:16]}-L{max_length}"


def cached_encode(encoder, cache: EmbeddingCache, texts: list[str], label: str) -> np.ndarray:
    """Encode what the cache lacks (bulk, length-sorted), with a progress bar."""
    with tqdm(total=len(texts), desc=f"encode {label}", unit="text", mininterval=2) as bar:
        return cache.encode(texts, lambda batch: encoder.encode_many(batch, 64), progress=bar.update)

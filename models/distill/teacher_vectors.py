"""Teacher vectors for any texts: from the embedding cache, encoding what is missing.

The teacher runs as ONNX (several times faster than eager PyTorch for bulk encoding),
exported once into ``.cache/onnx`` and keyed, like the cache, by the weights' hash.
"""

from __future__ import annotations

import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from models.embedding_cache import EmbeddingCache
from models.model_files import CACHE_DIR, teacher_dir

MAX_LENGTH = 128


def teacher_key(max_length: int = MAX_LENGTH, folder: Path | None = None) -> str:
    """The cache key of a teacher: the packaged one, or a phase-1 fine-tune's folder."""
    from models.embedding_cache import model_key

    return model_key("mpnet", Path(folder) if folder else teacher_dir(), max_length)


@lru_cache(maxsize=4)
def teacher_onnx_path(folder: Path | None = None) -> Path:
    target = CACHE_DIR / "onnx" / f"{teacher_key(folder=folder)}.onnx"
    if not target.is_file():
        from models.encoders import load_teacher, tokenizer_path
        from models.export import export_onnx

        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            export_onnx(load_teacher(folder), Path(tmp) / "model.onnx", tokenizer_path("teacher"))
            os.replace(Path(tmp) / "model.onnx", target)
    return target


class TeacherVectors:
    def __init__(self, threads: int = 2, encoder=None, folder: Path | None = None):
        """``encoder``: an already open teacher OnnxEncoder to reuse (the build has one);
        ``folder``: a phase-1 fine-tuned teacher instead of the packaged one."""
        self.threads = threads
        self.folder = Path(folder) if folder else None
        self.cache = EmbeddingCache(teacher_key(folder=self.folder), 768)
        self._encoder = encoder

    def encoder(self):
        if self._encoder is None:
            from models.encoders import tokenizer_path
            from retrieval.onnx_encoder import OnnxEncoder

            self._encoder = OnnxEncoder(teacher_onnx_path(self.folder), tokenizer_path("teacher"), MAX_LENGTH, self.threads)
        return self._encoder

    def __call__(self, texts: Sequence[str], label: str = "teacher") -> np.ndarray:
        from models.embedding_cache import cached_encode

        texts = list(texts)
        missing = len(texts) - len(self.cache.get_many(texts))
        if missing == 0:
            return self.cache.encode(texts, lambda batch: None)
        return cached_encode(self.encoder(), self.cache, texts, label)

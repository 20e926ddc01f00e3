"""ONNX Runtime sentence encoder: tokenizer.json + model.onnx -> normalised vectors.

Torch-free; used online by the service and offline by the build for bulk encoding.
The graph already does mean pooling and L2 normalisation (see artifact/manifest.py), so
this module only tokenises, pads to the longest text in the batch, and runs the session.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from retrieval.base import Encoded

log = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 128


def load_tokenizer(path: Path | str, max_length: int = DEFAULT_MAX_LENGTH) -> Tokenizer:
    """Load a tokenizer with fixed-length padding turned off.

    The packaged tokenizer.json files pad every input to 128 tokens, which makes a short
    query cost ten times more; here a batch is padded only to its longest member.
    """
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    pad_id = tokenizer.token_to_id("<pad>")
    pad_token = "<pad>"
    if pad_id is None:
        pad_id, pad_token = tokenizer.token_to_id("[PAD]") or 0, "[PAD]"
    tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


def resolve_providers(provider: str) -> list[str]:
    """'auto' takes CUDA when this onnxruntime build sees a GPU, else the CPU."""
    available = ort.get_available_providers()
    if provider == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise RuntimeError("HLM_PROVIDER=cuda but this onnxruntime has no CUDAExecutionProvider.")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if provider == "auto" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxEncoder:
    """One ONNX Runtime session and its tokenizer."""

    def __init__(
        self,
        model_path: Path | str,
        tokenizer_path: Path | str,
        max_length: int = DEFAULT_MAX_LENGTH,
        threads: int = 1,
        provider: str = "cpu",
        batch_invariant: bool = True,
    ):
        options = ort.SessionOptions()
        # One intra-op thread was faster and steadier than two on these 2-core machines.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(model_path), options, providers=resolve_providers(provider))
        self.provider = self.session.get_providers()[0]
        self.tokenizer = load_tokenizer(tokenizer_path, max_length)
        self.max_length = max_length
        # False for dynamic int8 graphs (their activation scales span the batch): the
        # service then runs such a model one text at a time (``encode_each``).
        self.batch_invariant = batch_invariant
        self.dim = int(self.session.get_outputs()[0].shape[-1])
        log.info("encoder %s runs on %s", Path(model_path).name, self.provider)

    def vocabulary_mismatch(self) -> str | None:
        """Why the tokenizer does not fit the model's word embedding, or None if it does.

        A tokenizer swapped for another model's gives token ids the embedding table does
        not hold (an error) or holds for other words (silently wrong vectors). ONNX Runtime
        checks Gather indices on the CPU, so two probes bound the table's rows: the
        tokenizer's largest id must run and the next one must not. Other providers do
        not check indices; there the probe is skipped (None).
        """
        if self.provider != "CPUExecutionProvider":
            return None
        size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        quiet = ort.RunOptions()
        quiet.log_severity_level = 4  # the failing probe is expected; keep ORT's error line out of the log

        def runs(token_id: int) -> bool:
            ids = np.array([[token_id]], dtype=np.int64)
            try:
                self.session.run(["embedding"], {"input_ids": ids, "attention_mask": np.ones_like(ids)}, quiet)
            except Exception:  # noqa: BLE001 - ORT raises its own Fail/InvalidArgument types
                return False
            return True

        if not runs(size - 1):
            return f"its tokenizer has {size} tokens but the model's word embedding has fewer rows"
        if runs(size):
            return f"its tokenizer has {size} tokens but the model's word embedding has more rows"
        return None

    def encode(self, texts: Sequence[str]) -> Encoded:
        # One text: the tokenizer's plain encode (encode_batch hands even one text to its
        # thread pool, which costs a served query more than the static student's encode).
        encodings = [self.tokenizer.encode(texts[0])] if len(texts) == 1 else self.tokenizer.encode_batch(list(texts))
        input_ids = np.array([e.ids for e in encodings], dtype=np.int64)
        attention_mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        (vectors,) = self.session.run(["embedding"], {"input_ids": input_ids, "attention_mask": attention_mask})
        truncated = [bool(e.overflowing) for e in encodings]
        return Encoded(np.ascontiguousarray(vectors, dtype=np.float32), truncated, int(input_ids.size))

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text after truncation (what a text costs the encoder)."""
        return [len(e.ids) for e in self._lengths_tokenizer().encode_batch(list(texts))]

    def encode_each(self, texts: Sequence[str]) -> Encoded:
        """Tokenise as one batch, run the session one text at a time (no padding).

        For models whose result depends on the whole input tensor (dynamic int8
        quantisation scales activations per tensor), this gives every text exactly the
        vector ``encode([text])`` gives it, whatever else is in the batch.
        """
        encodings = self.tokenizer.encode_batch(list(texts))
        vectors = []
        for e in encodings:
            n = sum(e.attention_mask)
            ids = np.array([e.ids[:n]], dtype=np.int64)
            (vector,) = self.session.run(["embedding"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})
            vectors.append(vector)
        truncated = [bool(e.overflowing) for e in encodings]
        tokens = sum(sum(e.attention_mask) for e in encodings)
        return Encoded(np.ascontiguousarray(np.vstack(vectors), dtype=np.float32), truncated, int(tokens))

    def encode_many(
        self,
        texts: Sequence[str],
        batch_size: int = 64,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Bulk encoding: length-sorted batches (little padding), results in input order."""
        lengths = self.token_counts(texts)
        order = np.argsort(lengths, kind="stable")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            chunk = order[start : start + batch_size]
            out[chunk] = self.encode([texts[i] for i in chunk]).vectors
            if progress:
                progress(len(chunk))
        return out

    def _lengths_tokenizer(self) -> Tokenizer:
        # A copy without padding, to measure each text's own length.
        if not hasattr(self, "_unpadded"):
            self._unpadded = Tokenizer.from_str(self.tokenizer.to_str())
            self._unpadded.no_padding()
        return self._unpadded


def default_threads() -> int:
    return max(1, min(2, os.cpu_count() or 1))

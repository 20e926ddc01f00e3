"""The static student: one teacher vector per vocabulary token, averaged at query time.

There is no encoder to run: a query's vector is the weighted mean of its tokens' rows in
a table, then an optional residual linear head, then L2 normalisation. On a CPU that is a
gather and a sum (tens of microseconds with tokenisation), so the end-to-end cost is set by
the HTTP stack and the index, not the student. Short keyword-like queries are the case
where word order matters least (model2vec, static-retrieval-mrl-en-v1).

- Initialisation: every token of the teacher's own vocabulary is encoded *alone* by the
  teacher the build uses (``<s> token </s>``, mean-pooled and normalised as always), so a
  one-token query starts exactly at the teacher's vector for it and the table starts inside
  the teacher's space (no PCA: the rows stay 768-d). Cached per teacher in ``.cache/static``.
- Token weights: a learned log-weight per token (uniform at the start, so training finds
  the Zipf-like down-weighting of frequent tokens itself); the tokenizer's special tokens
  (<s>, </s>, <pad>) weigh almost nothing, so they cannot dominate a short query.
- Training: the existing phases (``models/distill/train.py``): phase 2 regresses the
  teacher's vectors of many texts, phase 3 adds InfoNCE + ranking KL on judged pairs; the
  table takes sparse updates (a row moves only when a batch uses its token, so rare tokens
  keep their teacher initialisation), and validation on a held-out slice of the training
  texts keeps the best step (the probe in issue #13 overfit after 1-2 minutes).
- Export: the same ``input_ids, attention_mask -> embedding`` ONNX signature as every
  other encoder (Gather, Mul, ReduceSum, Div, MatMul), fp32 only: there is no MatMul
  worth quantising, and fp32 is batch-invariant, so the service batches it freely.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.model_files import CACHE_DIR

# A special token's weight relative to a word's at the start: small but not zero, so a
# query that tokenises to special tokens only still gets a (poor) vector, never a zero one.
SPECIAL_WEIGHT = 1e-3


class StaticStudent(nn.Module):
    """input_ids, attention_mask -> L2-normalised weighted mean of token rows (+ head)."""

    def __init__(self, table: np.ndarray, special_ids: list[int], head: bool = False,
                 present: np.ndarray | None = None):
        """``present``: the token ids whose rows ``table`` holds, when it holds only some (a
        table restricted to a build's texts); every other token weighs nothing."""
        super().__init__()
        vocab, dim = table.shape
        self.table = nn.Embedding(vocab, dim, sparse=True)
        with torch.no_grad():
            self.table.weight.copy_(torch.from_numpy(np.ascontiguousarray(table, dtype=np.float32)))
        self.log_weight = nn.Parameter(torch.zeros(vocab))
        keep = torch.ones(vocab)
        if present is not None:
            absent = torch.ones(vocab, dtype=torch.bool)
            absent[torch.as_tensor(np.asarray(present), dtype=torch.long)] = False
            keep[absent] = 0.0
        keep[torch.tensor(special_ids, dtype=torch.long)] = SPECIAL_WEIGHT
        self.register_buffer("keep", keep)
        # Residual head, zero at the start: the student begins as the plain token average.
        self.head = nn.Linear(dim, dim) if head else None
        if self.head is not None:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    @property
    def dim(self) -> int:
        return self.table.embedding_dim

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        rows = self.table(input_ids)  # [batch, seq, dim]
        weights = torch.exp(self.log_weight[input_ids]) * self.keep[input_ids] * attention_mask.to(rows.dtype)
        pooled = (rows * weights.unsqueeze(-1)).sum(dim=1) / weights.sum(dim=1, keepdim=True).clamp(min=1e-9)
        if self.head is not None:
            pooled = pooled + self.head(pooled)
        return nn.functional.normalize(pooled, p=2, dim=-1)

    def sparse_parameters(self):
        """The table: a batch touches few of its rows (the trainer gives it SparseAdam)."""
        return [self.table.weight]


def token_vectors(teacher_encoder, ids: np.ndarray, cls_id: int, sep_id: int, batch_size: int = 256,
                  progress=None) -> np.ndarray:
    """The teacher's vector of each token id encoded alone (``<s> id </s>``).

    ``teacher_encoder`` is an ``OnnxEncoder`` of the teacher; the ids go straight into its
    session (no text round trip), so every id gets exactly its own row.
    """
    out = np.zeros((len(ids), teacher_encoder.dim), dtype=np.float32)
    for start in range(0, len(ids), batch_size):
        chunk = np.asarray(ids[start : start + batch_size], dtype=np.int64)
        batch = np.stack([np.full_like(chunk, cls_id), chunk, np.full_like(chunk, sep_id)], axis=1)
        (vectors,) = teacher_encoder.session.run(["embedding"], {"input_ids": batch, "attention_mask": np.ones_like(batch)})
        out[start : start + len(chunk)] = vectors
        if progress is not None:
            progress(len(chunk))
    return out


def vocabulary_table(teacher_encoder, vocab_size: int, cls_id: int, sep_id: int, cache_key: str,
                     ids: np.ndarray | None = None) -> np.ndarray:
    """``token_vectors`` of the whole vocabulary, cached on disk per teacher (~3 min on 2 cores).

    With ``ids``, only those rows (the others zero): from the whole table when it is cached,
    else encoded and cached under a name of their own (never as the whole table).
    """
    path = CACHE_DIR / "static" / f"{cache_key}-vocab{vocab_size}.npy"
    whole = np.load(path) if path.is_file() else None
    if whole is not None and whole.shape[0] == vocab_size:
        if ids is None:
            return whole
        table = np.zeros_like(whole)
        table[ids] = whole[ids]
        return table
    if ids is not None:
        import hashlib

        ids = np.asarray(ids, dtype=np.int64)
        digest = hashlib.sha256(ids.tobytes()).hexdigest()[:12]
        part = CACHE_DIR / "static" / f"{cache_key}-vocab{vocab_size}-{len(ids)}-{digest}.npy"
        rows = np.load(part) if part.is_file() else None
        if rows is None or rows.shape[0] != len(ids):
            rows = token_vectors(teacher_encoder, ids, cls_id, sep_id)
            _save(part, rows)
        table = np.zeros((vocab_size, rows.shape[1]), dtype=np.float32)
        table[ids] = rows
        return table
    from tqdm import tqdm

    with tqdm(total=vocab_size, desc="static student: teacher vector per token", unit="token", mininterval=5) as bar:
        table = token_vectors(teacher_encoder, np.arange(vocab_size), cls_id, sep_id, progress=bar.update)
    _save(path, table)
    return table


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npy", delete=False) as tmp:
        np.save(tmp, array)
    os.replace(tmp.name, path)


def special_token_ids(tokenizer) -> tuple[list[int], int, int]:
    """(special ids, <s> id, </s> id) of the teacher's tokenizer (``tokenizers.Tokenizer``)."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    cls_id, sep_id = vocab["<s>"], vocab["</s>"]
    special = [vocab[t] for t in ("<s>", "</s>", "<pad>") if t in vocab]
    return special, cls_id, sep_id


def make_static_student(teacher_folder: Path | None = None, head: bool = False, threads: int = 2,
                        tokens: np.ndarray | None = None) -> StaticStudent:
    """A fresh static student initialised from the (phase-1 or packaged) teacher.

    ``tokens``: hold rows for these token ids only (the special tokens are added); every
    other token weighs nothing. On every text made of these tokens the student is the one
    the whole table gives, before and after training: a token's row and weight move only
    when a batch uses it. The ``tiny`` test profile uses it (models/profiles.py).
    """
    from models.distill.teacher_vectors import TeacherVectors, teacher_key
    from models.encoders import tokenizer_path
    from retrieval.onnx_encoder import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_path("teacher"))
    special, cls_id, sep_id = special_token_ids(tokenizer)
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    teacher = TeacherVectors(threads, folder=teacher_folder)
    if tokens is not None:
        tokens = np.unique(np.concatenate([np.asarray(tokens, dtype=np.int64), np.asarray(special + [cls_id, sep_id])]))
    table = vocabulary_table(teacher.encoder(), vocab_size, cls_id, sep_id, teacher_key(folder=teacher_folder), tokens)
    return StaticStudent(table, special, head=head, present=tokens)


def text_tokens(texts, tokenizer=None) -> np.ndarray:
    """The sorted distinct teacher-tokenizer ids of ``texts`` (what a restricted table holds)."""
    if tokenizer is None:
        from models.encoders import tokenizer_path
        from retrieval.onnx_encoder import load_tokenizer

        tokenizer = load_tokenizer(tokenizer_path("teacher"))
    ids = set()
    for start in range(0, len(texts), 1024):
        for enc in tokenizer.encode_batch(list(texts[start:start + 1024])):
            ids.update(enc.ids)
    return np.array(sorted(ids), dtype=np.int64)

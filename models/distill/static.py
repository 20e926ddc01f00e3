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

    def __init__(self, table: np.ndarray, special_ids: list[int], head: bool = False):
        super().__init__()
        vocab, dim = table.shape
        self.table = nn.Embedding(vocab, dim, sparse=True)
        with torch.no_grad():
            self.table.weight.copy_(torch.from_numpy(np.ascontiguousarray(table, dtype=np.float32)))
        self.log_weight = nn.Parameter(torch.zeros(vocab))
        keep = torch.ones(vocab)
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


def vocabulary_table(teacher_encoder, vocab_size: int, cls_id: int, sep_id: int, cache_key: str) -> np.ndarray:
    """``token_vectors`` of the whole vocabulary, cached on disk per teacher (~3 min on 2 cores)."""
    path = CACHE_DIR / "static" / f"{cache_key}-vocab{vocab_size}.npy"
    if path.is_file():
        table = np.load(path)
        if table.shape[0] == vocab_size:
            return table
    from tqdm import tqdm

    with tqdm(total=vocab_size, desc="static student: teacher vector per token", unit="token", mininterval=5) as bar:
        table = token_vectors(teacher_encoder, np.arange(vocab_size), cls_id, sep_id, progress=bar.update)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npy", delete=False) as tmp:
        np.save(tmp, table)
    os.replace(tmp.name, path)
    return table


def special_token_ids(tokenizer) -> tuple[list[int], int, int]:
    """(special ids, <s> id, </s> id) of the teacher's tokenizer (``tokenizers.Tokenizer``)."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    cls_id, sep_id = vocab["<s>"], vocab["</s>"]
    special = [vocab[t] for t in ("<s>", "</s>", "<pad>") if t in vocab]
    return special, cls_id, sep_id


def make_static_student(teacher_folder: Path | None = None, head: bool = False, threads: int = 2) -> StaticStudent:
    """A fresh static student initialised from the (phase-1 or packaged) teacher."""
    from models.distill.teacher_vectors import TeacherVectors, teacher_key
    from models.encoders import tokenizer_path
    from retrieval.onnx_encoder import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_path("teacher"))
    special, cls_id, sep_id = special_token_ids(tokenizer)
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    teacher = TeacherVectors(threads, folder=teacher_folder)
    table = vocabulary_table(teacher.encoder(), vocab_size, cls_id, sep_id, teacher_key(folder=teacher_folder))
    return StaticStudent(table, special, head=head)

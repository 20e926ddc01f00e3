"""Training objectives. All take L2-normalised vectors; scores are dot products (cosine).

- ``l2_loss``: squared L2 distance to the teacher's vector (phase 2).
- ``info_nce``: contrastive loss of a query against its positive keyword vector, with the
  other positives in the batch and mined hard negatives as negatives (phase 3). Keyword
  vectors are the teacher's, frozen: the index never changes.
- ``ranking_kl``: KL divergence between the teacher's and the student's score
  distributions over a candidate set (the teacher's top keywords plus negatives): trains
  the student to rank the way the teacher does, which is what overlap@k measures.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def l2_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return ((student - teacher) ** 2).sum(dim=-1).mean()


def info_nce(
    queries: torch.Tensor,
    positives: torch.Tensor,
    hard_negatives: torch.Tensor | None = None,
    temperature: float = 0.05,
    positive_ids: list | None = None,
) -> torch.Tensor:
    """queries [B, d], positives [B, d], hard_negatives [B, H, d] or None.

    Candidates for query i: every positive in the batch (in-batch negatives) plus its own
    hard negatives. When two queries share a positive keyword (``positive_ids``), the
    duplicate is masked out rather than counted as a negative.
    """
    logits = queries @ positives.T  # [B, B]
    if positive_ids is not None:
        same = torch.tensor([[a == b for b in positive_ids] for a in positive_ids], dtype=torch.bool)
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    if hard_negatives is not None and hard_negatives.numel():
        hard = torch.einsum("bd,bhd->bh", queries, hard_negatives)
        logits = torch.cat([logits, hard], dim=1)
    targets = torch.arange(queries.shape[0])
    return F.cross_entropy(logits / temperature, targets)


def ranking_kl(
    student_queries: torch.Tensor,
    teacher_queries: torch.Tensor,
    candidates: torch.Tensor,
    temperature: float = 0.05,
) -> torch.Tensor:
    """KL(teacher || student) over each query's candidates [B, C, d]."""
    student_scores = torch.einsum("bd,bcd->bc", student_queries, candidates) / temperature
    teacher_scores = torch.einsum("bd,bcd->bc", teacher_queries, candidates) / temperature
    return F.kl_div(
        F.log_softmax(student_scores, dim=-1), F.log_softmax(teacher_scores, dim=-1), log_target=True, reduction="batchmean"
    )

"""The simplest student: all-MiniLM-L6-v2 plus a 384->768 projection fitted in closed form.

Ridge least squares from the student's own (normalised) vectors to the teacher's vectors
of the same texts. A placeholder alignment, not a trained student: the training phases
(models/distill) start from it and replace it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from models.encoders import SentenceEncoder


def fit_projection(student_vectors: np.ndarray, teacher_vectors: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """W [out, in], b [out] minimising ||X W^T + b - Y||^2 + ridge ||W||^2."""
    x = student_vectors.astype(np.float64)
    y = teacher_vectors.astype(np.float64)
    x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - x_mean, y - y_mean
    gram = xc.T @ xc + ridge * len(x) * np.eye(x.shape[1])
    weight = np.linalg.solve(gram, xc.T @ yc)  # [in, out]
    bias = y_mean - x_mean @ weight
    return weight.T.astype(np.float32), bias.astype(np.float32)


def attach_projection(base: SentenceEncoder, weight: np.ndarray, bias: np.ndarray) -> SentenceEncoder:
    projection = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        projection.weight.copy_(torch.from_numpy(weight))
        projection.bias.copy_(torch.from_numpy(bias))
    return SentenceEncoder(base.transformer, projection)

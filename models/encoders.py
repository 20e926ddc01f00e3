"""PyTorch sentence encoders: a transformer, mean pooling, L2 normalisation, and for
the student an optional linear projection into the teacher's space.

The same module is trained (phases 1-3) and exported to ONNX, so pooling and
normalisation live inside the exported graph and the runtime needs no post-processing.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer

from models.model_files import STUDENT_BASE_NAME, TEACHER_NAME, student_base_dir, teacher_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from packages, never a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class SentenceEncoder(nn.Module):
    """input_ids, attention_mask -> L2-normalised sentence vector."""

    def __init__(self, transformer: nn.Module, projection: nn.Linear | None = None):
        super().__init__()
        self.transformer = transformer
        self.projection = projection

    @property
    def dim(self) -> int:
        if self.projection is not None:
            return self.projection.out_features
        return self.transformer.config.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        pooled = nn.functional.normalize(pooled, p=2, dim=-1)
        if self.projection is not None:
            pooled = nn.functional.normalize(self.projection(pooled), p=2, dim=-1)
        return pooled


def _load_transformer(path: Path) -> nn.Module:
    # eager attention exports to plain ONNX ops that every runtime version runs.
    model = AutoModel.from_pretrained(str(path), attn_implementation="eager")
    model.eval()
    return model


def load_teacher(path: Path | None = None) -> SentenceEncoder:
    return SentenceEncoder(_load_transformer(path or teacher_dir()))


def load_student_base(path: Path | None = None, layers: int | None = None) -> SentenceEncoder:
    """all-MiniLM-L6-v2 in its own 384-d space, optionally cut to its first ``layers``."""
    transformer = _load_transformer(path or student_base_dir())
    if layers is not None:
        keep_first_layers(transformer, layers)
    return SentenceEncoder(transformer)


def keep_first_layers(transformer: nn.Module, layers: int) -> None:
    """Drop all but the first ``layers`` transformer blocks (the cut student)."""
    blocks = transformer.encoder.layer
    if not 1 <= layers <= len(blocks):
        raise ValueError(f"cannot keep {layers} of {len(blocks)} layers")
    transformer.encoder.layer = nn.ModuleList(list(blocks)[:layers])
    transformer.config.num_hidden_layers = layers


def tokenizer_path(name: str) -> Path:
    """The tokenizer.json of a packaged model ('teacher' or 'student')."""
    folder = teacher_dir() if name == "teacher" else student_base_dir()
    return folder / "tokenizer.json"


def hf_tokenizer(name: str):
    folder = teacher_dir() if name == "teacher" else student_base_dir()
    return AutoTokenizer.from_pretrained(str(folder))


MODEL_NAMES = {"teacher": TEACHER_NAME, "student": STUDENT_BASE_NAME}

"""Student architectures, by name.

- ``minilm-l6``: all-MiniLM-L6-v2 (384-d) + a linear projection to the teacher's 768-d.
- ``minilm-l3``: the same with only its first 3 layers.
- ``mpnet-l1``/``-l2``/``-l3``/``-l4``: the teacher itself cut to its first k of 12 layers:
  same width and tokenizer, no projection; it starts inside the teacher's space.
- ``static`` / ``static-head``: no encoder at all: a table of teacher vectors, one per token
  of the teacher's vocabulary, averaged with learned weights (``static-head`` adds a residual
  768x768 linear head); see ``models/distill/static.py``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from models.encoders import SentenceEncoder, keep_first_layers, load_student_base, load_teacher
from models.student_linear import attach_projection


@dataclass(frozen=True)
class StudentSpec:
    name: str
    family: str  # "minilm", "mpnet" or "static": which tokenizer and weights it starts from
    layers: int
    projection: bool
    head: bool = False  # static students: a residual linear head after the token average

    def to_dict(self) -> dict:
        return asdict(self)


STUDENTS = {
    "minilm-l6": StudentSpec("minilm-l6", "minilm", 6, True),
    "minilm-l3": StudentSpec("minilm-l3", "minilm", 3, True),
    "mpnet-l1": StudentSpec("mpnet-l1", "mpnet", 1, False),
    "mpnet-l2": StudentSpec("mpnet-l2", "mpnet", 2, False),
    "mpnet-l3": StudentSpec("mpnet-l3", "mpnet", 3, False),
    "mpnet-l4": StudentSpec("mpnet-l4", "mpnet", 4, False),
    "static": StudentSpec("static", "static", 0, False),
    "static-head": StudentSpec("static-head", "static", 0, False, head=True),
}


def get_spec(name: str) -> StudentSpec:
    if name not in STUDENTS:
        raise ValueError(f"unknown student {name!r}; choose one of {', '.join(STUDENTS)}")
    return STUDENTS[name]


def tokenizer_name(spec: StudentSpec) -> str:
    """Which packaged tokenizer the student uses ('student' = MiniLM's, 'teacher' = MPNet's)."""
    return "student" if spec.family == "minilm" else "teacher"


def is_quantizable(spec: StudentSpec) -> bool:
    """Whether an int8 copy is worth making: transformer students only (a static student is a
    gather and a sum; its fp32 graph is already tens of microseconds and batch-invariant)."""
    return spec.family != "static"


def make_student(
    spec: StudentSpec, projection: tuple[np.ndarray, np.ndarray] | None = None, teacher_folder: str | Path | None = None,
    table_tokens: np.ndarray | None = None,
) -> SentenceEncoder:
    """A fresh student; for projected students, the projection's starting weights.

    Without ``projection`` weights the projection starts as a random init; the trainer
    passes the closed-form fit instead, which is a much better starting point. Cut
    students start from ``teacher_folder`` (a phase-1 fine-tuned teacher) when given. A static
    student's table holds only ``table_tokens`` when given (``make_static_student``).
    """
    if spec.family == "static":
        from models.distill.static import make_static_student

        return make_static_student(Path(teacher_folder) if teacher_folder else None, head=spec.head, tokens=table_tokens)
    if spec.family == "mpnet":
        model = load_teacher(Path(teacher_folder) if teacher_folder else None)
        keep_first_layers(model.transformer, spec.layers)
        return model
    base = load_student_base(layers=spec.layers)
    if not spec.projection:
        return base
    if projection is None:
        rng = np.random.default_rng(0)
        weight = rng.normal(0, 0.05, (768, base.dim)).astype(np.float32)
        projection = (weight, np.zeros(768, dtype=np.float32))
    return attach_projection(base, *projection)

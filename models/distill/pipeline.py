"""``hlm distill`` and ``hlm eval``: run the phases for a student and score the results.

phase 2 (L2 alignment, optionally with ranking KL) starts from the closed-form projection
fit; phase 3 (contrastive + a share of L2) starts from phase 2's checkpoint. Each phase
writes its own checkpoint folder under ``runs/students/<student>/`` and is resumable.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from models.distill.recipes import phase_settings
from models.distill.students import get_spec, make_student, tokenizer_name
from models.distill.train import TrainConfig, TrainingData, train
from models.encoders import SentenceEncoder, tokenizer_path
from models.student_linear import fit_projection


def torch_encoder(model: SentenceEncoder, tokenizer: str, batch_size: int = 128):
    """A bulk encode function over a PyTorch student (length-sorted batches)."""
    from retrieval.onnx_encoder import load_tokenizer

    tok = load_tokenizer(tokenizer_path(tokenizer))

    def encode(texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), model.dim), dtype=np.float32)
        model.eval()
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                rows = order[start : start + batch_size]
                enc = tok.encode_batch([texts[i] for i in rows])
                ids = torch.tensor([e.ids for e in enc])
                mask = torch.tensor([e.attention_mask for e in enc])
                out[rows] = model(ids, mask).numpy()
        return out

    return encode


def initial_projection(student: str, data: TrainingData, teacher_folder=None, sample: int = 12000, seed: int = 0):
    """Closed-form ridge fit of the base model's vectors onto the teacher's (None if unprojected)."""
    spec = get_spec(student)
    if not spec.projection:
        return None
    base = make_student(replace(spec, projection=False), teacher_folder=teacher_folder)
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(data.texts), min(sample, len(data.texts)), replace=False)
    x = torch_encoder(base, tokenizer_name(spec))([data.texts[i] for i in rows])
    return fit_projection(x, data.text_targets[rows], ridge=1e-2)


def run_phases(
    student: str,
    data: TrainingData,
    out_root: Path,
    phases: Sequence[str] = ("2", "3"),
    phase2: dict | None = None,
    phase3: dict | None = None,
    threads: int = 2,
    teacher_folder: Path | None = None,
    table_tokens: Path | None = None,
) -> dict[str, Path]:
    """Phases 2 and/or 3 (phase 1, the teacher's fine-tune, is ``models.distill.phase1``);
    ``teacher_folder`` is that fine-tuned teacher when there is one; ``table_tokens`` an .npy
    of the token ids a static student's table holds (None = the whole vocabulary)."""
    out_root = Path(out_root)
    common = {"threads": threads, "teacher_folder": str(teacher_folder) if teacher_folder else None,
              "table_tokens": str(table_tokens) if table_tokens else None}
    done: dict[str, Path] = {}
    if "2" in phases:
        config = TrainConfig(student=student, out=str(out_root / "phase2"), **common,
                             **{"l2_weight": 1.0, **phase_settings(student, "2"), "notes": {"phase": "phase2"},
                                **(phase2 or {})})
        projection = None if (Path(config.out) / "state.pt").exists() else initial_projection(student, data, teacher_folder)
        done["phase2"] = train(config, data, projection)
    if "3" in phases:
        init = done.get("phase2") or (out_root / "phase2" if (out_root / "phase2" / "model.pt").exists() else None)
        settings = {"l2_weight": 1.0, "contrastive_weight": 1.0, "kl_weight": 1.0, **phase_settings(student, "3"),
                    "init": str(init) if init else None, "notes": {"phase": "phase3"}, **(phase3 or {})}
        init = settings["init"]
        config = TrainConfig(student=student, out=str(out_root / "phase3"), **common, **settings)
        projection = None if init else initial_projection(student, data, teacher_folder)
        done["phase3"] = train(config, data, projection)
    return done

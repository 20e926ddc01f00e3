"""Save and load trained students: a folder with spec.json, model.pt and training state.

Saved through a temp folder and renamed, so a checkpoint on disk is always whole; the
trainer resumes from ``state.pt`` (optimizer, scheduler, step, loss history, time used).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from models.distill.students import StudentSpec, make_student
from models.encoders import SentenceEncoder
from artifact.manifest import staged_folder


def save_checkpoint(folder: Path, model: SentenceEncoder, spec: StudentSpec, info: dict, state: dict | None = None) -> None:
    with staged_folder(Path(folder)) as tmp:
        (tmp / "spec.json").write_text(json.dumps({"spec": spec.to_dict(), "info": info}, indent=2))
        torch.save(model.state_dict(), tmp / "model.pt")
        if state is not None:
            torch.save(state, tmp / "state.pt")


def read_spec(folder: Path) -> tuple[StudentSpec, dict]:
    meta = json.loads((Path(folder) / "spec.json").read_text())
    return StudentSpec(**meta["spec"]), meta.get("info", {})


def load_student_checkpoint(folder: Path) -> SentenceEncoder:
    spec, _ = read_spec(folder)
    state = torch.load(Path(folder) / "model.pt", map_location="cpu")
    if spec.family == "static":
        # The table's shape is in the checkpoint: no teacher needed to rebuild the module.
        from models.distill.static import StaticStudent

        keep = state["keep"]
        special = [i for i, w in enumerate(keep.tolist()) if w < 1.0]
        model = StaticStudent(state["table.weight"].numpy(), special, head=spec.head)
    else:
        model = make_student(spec)
    model.load_state_dict(state)
    model.eval()
    return model

"""Per-family training settings of phases 2 and 3, under whatever a caller sets explicitly.

The families differ by orders of magnitude in what a step costs and what it moves: a cut
transformer takes ~1 s for a batch of 64 at lr 1e-4; a static student's step is a gather
and a sparse update, so it takes batches of 512 at lr 5e-3, and with ~30k free rows it
overfits within minutes, so its runs validate on a held-out slice and keep the best step.
Chosen on the dev split (scripts/static_probe.py, docs/RESULTS.md).
"""

from __future__ import annotations

from models.distill.students import get_spec

_TRANSFORMER = {"2": {"lr": 1e-4}, "3": {"lr": 1e-4}}
_STATIC = {
    "2": {"lr": 5e-3, "batch_size": 512, "validate_every": 100},
    # 128, not 512: ranking KL scores every query against the batch's candidates ([b, b, 768]).
    "3": {"lr": 2e-3, "batch_size": 128, "validate_every": 50},
}


def phase_settings(student: str, phase: str) -> dict:
    """The family's settings for ``phase`` ("2" or "3") of ``student``."""
    family = _STATIC if get_spec(student).family == "static" else _TRANSFORMER
    return dict(family[phase])

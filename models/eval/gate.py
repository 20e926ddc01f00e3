"""The quality gate: an artifact is servable only if its student keeps a configured share
of the teacher's dev nDCG@10 (default 0.98, the paper's "over 98% of the teacher's
precision"), unless the builder says otherwise, and then the manifest says so.

The build scores on the judged dev split against an index of the dev queries' judged
products plus the profile's own product titles as distractors (encoding all 54.7k titles
would not fit the demo's time budget); ``hlm eval`` gives the full-index figures.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

DEFAULT_SHARE = 0.98


@dataclass
class GateResult:
    passed: bool
    servable: bool
    metric: str
    student: float | None
    teacher: float | None
    ratio: float | None
    required: float
    overridden: bool
    message: str
    # How the rows were ranked: exact search over the gate's titles, or the served index's
    # answers (a compressed index); then ``exact`` holds the exact-search nDCG@10 beside them.
    path: str = "exact"
    exact: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def check_gate(student: float | None, teacher: float | None, required: float = DEFAULT_SHARE,
               allow_below: bool = False, metric: str = "ndcg_at_10") -> GateResult:
    if student is None or not teacher:
        passed, ratio = False, None
        message = f"the gate could not score {metric} (no judged dev queries), so the student is unproven"
    else:
        ratio = student / teacher
        passed = ratio >= required
        verdict = "passes" if passed else "fails"
        message = (
            f"the student {verdict} the quality gate: dev {metric} {student:.4f} is {ratio:.3f} of the "
            f"teacher's {teacher:.4f} (required {required:.2f})"
        )
    if not passed and allow_below:
        message += "; marked servable anyway because --allow-below-gate was given"
    return GateResult(passed, passed or allow_below, metric, student, teacher, ratio, required, not passed and allow_below, message)

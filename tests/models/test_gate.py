"""The quality gate's decisions, and what a real build records."""

import json

import pytest

from models.eval.gate import check_gate


def test_gate_passes_at_the_share():
    result = check_gate(0.2500, 0.2540)
    assert result.passed and result.servable and not result.overridden
    assert result.ratio == pytest.approx(0.2500 / 0.2540)
    assert "passes" in result.message


def test_gate_fails_below_the_share_and_says_why():
    result = check_gate(0.12, 0.25)
    assert not result.passed and not result.servable
    assert "0.480 of the teacher's 0.2500 (required 0.98)" in result.message


def test_override_is_servable_but_recorded():
    result = check_gate(0.12, 0.25, allow_below=True)
    assert result.servable and result.overridden and not result.passed
    assert "--allow-below-gate" in result.message


def test_unscorable_is_not_servable():
    assert not check_gate(None, 0.25).servable


@pytest.mark.slow
def test_a_build_below_the_gate_is_marked_not_servable(unservable_artifact, command_log):
    """`hlm build` without --allow-below-gate: a complete, verified artifact that says it must not be served."""
    from artifact.manifest import verify

    manifest = verify(unservable_artifact)  # every file is sound: the refusal is the gate's alone
    gate = manifest["gate"]
    assert manifest["servable"] is False
    assert gate["passed"] is False and gate["overridden"] is False and gate["servable"] is False
    assert gate["ratio"] == pytest.approx(gate["student"] / gate["teacher"]) and gate["ratio"] < gate["required"] == 0.98
    assert gate["message"] == (f"the student fails the quality gate: dev ndcg_at_10 {gate['student']:.4f} is "
                               f"{gate['ratio']:.3f} of the teacher's {gate['teacher']:.4f} (required 0.98)")
    assert json.loads((unservable_artifact / "eval.json").read_text())["gate"] == gate
    log = command_log(unservable_artifact)
    assert f"  gate       {gate['message']}" in log and "--allow-below-gate" not in log


@pytest.mark.slow
def test_the_override_is_recorded(small_artifact):
    """The suite's servable artifact: the same failing kind of student, served only because the builder said so."""
    manifest = json.loads((small_artifact / "manifest.json").read_text())
    gate = manifest["gate"]
    # The small profile's closed-form student fails the gate; were it to pass, the
    # override (and the start-up warning tested in tests/service) would be untested.
    assert gate["passed"] is False and gate["ratio"] < gate["required"]
    assert manifest["servable"] is True and gate["servable"] is True and gate["overridden"] is True
    assert gate["message"].endswith("; marked servable anyway because --allow-below-gate was given")
    assert json.loads((small_artifact / "eval.json").read_text())["gate"] == gate

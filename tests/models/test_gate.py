"""The quality gate's decisions, and what a real build records."""

import json

import pytest

from models.gate import check_gate


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
def test_build_records_the_gate(small_artifact):
    manifest = json.loads((small_artifact / "manifest.json").read_text())
    gate = manifest["gate"]
    assert manifest["servable"] is True
    assert gate["passed"] == (gate["ratio"] >= gate["required"])
    assert gate["overridden"] == (not gate["passed"])
    assert json.loads((small_artifact / "eval.json").read_text())["gate"] == gate

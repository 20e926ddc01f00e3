"""report.md: plots shown inline, and the closing sentence computed from the run's numbers."""

from __future__ import annotations

import json
import re

import pytest

from loadtest.compare import compare
from loadtest.report import PLOTS, verdict

SLOS = [15.0, 100.0]


def summary(student: dict, teacher: dict, capped: dict | None = None) -> dict:
    capped = capped or {}
    return {"baseline": "teacher", "encoders": {
        "student": {"max_rps": student, "capped": capped.get("student", {})},
        "teacher": {"max_rps": teacher, "capped": capped.get("teacher", {})},
    }}


def test_the_ratio_at_the_strict_slo_when_both_met_it():
    line = verdict(summary({"15": 440.0, "100": 640.0}, {"15": 40.0, "100": 60.0}), SLOS)
    assert line.startswith("student sustains 11× the teacher at p99 ≤ 15 ms (440 vs 40 requests/s)")
    assert "serve student" in line


def test_a_teacher_that_never_met_the_slo_is_said_so():
    line = verdict(summary({"15": 320.0, "100": 640.0}, {"15": None, "100": 45.0}), SLOS)
    assert "student sustains 320 requests/s at p99 ≤ 15 ms" in line and "teacher met at no tested rate" in line


def test_a_capped_rate_is_a_lower_bound():
    line = verdict(summary({"15": 80.0}, {"15": 20.0}, capped={"student": {"15": True}}), [15.0])
    assert "at least 4.0× the teacher" in line and "≥ 80 vs 20" in line


def test_a_slower_candidate_is_not_recommended():
    line = verdict(summary({"15": 10.0}, {"15": 25.0}), [15.0])
    assert line.startswith("teacher sustains 2.5× the student") and "do not replace" in line


def test_the_looser_slo_when_nobody_met_the_strict_one():
    line = verdict(summary({"15": None, "100": 90.0}, {"15": None, "100": 30.0}), SLOS)
    assert line.startswith("student sustains 3.0× the teacher at p99 ≤ 100 ms")


def test_nothing_met_any_slo():
    assert verdict(summary({"15": None}, {"15": None}), [15.0]).startswith("Neither student nor teacher")


@pytest.mark.timeout(300)
def test_a_real_run_embeds_its_plots_and_ends_with_its_verdict(quick_service, tmp_path):
    folder = compare(quick_service, runs_root=tmp_path, duration_s=0.5, warmup_s=0.1, start_rps=20,
                     max_rps=20, refine=0, progress=None)
    md = (folder / "report.md").read_text()
    links = re.findall(r"!\[[^\]]+\]\(([^)]+)\)", md)
    assert links == [name for name, _ in PLOTS]
    for link in links:  # relative to the report, and there
        assert (folder / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((folder / "results.json").read_text())
    last = md.rstrip("\n").splitlines()[-1]
    assert last == "**" + verdict(doc["summary"], doc["meta"]["slos_ms"]) + "**"
    assert md.index("## Plots") < md.index("## Steps in run order") < md.index("## Verdict")

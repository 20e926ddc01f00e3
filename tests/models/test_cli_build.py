"""`hlm build --student`: a study variant through the build; a wrong name stops before any work."""

from __future__ import annotations

from typer.testing import CliRunner

from hlm.cli import app
from models.profiles import get_profile


def test_an_unknown_student_is_refused_with_the_choices(tmp_path):
    result = CliRunner().invoke(app, ["build", "--profile", "small", "--student", "giant", "--out", str(tmp_path / "a")])
    assert result.exit_code == 2
    assert "unknown student 'giant'" in result.output and "mpnet-l3" in result.output
    assert not (tmp_path / "a").exists()


def test_the_student_option_overrides_only_the_profiles_student():
    full, l3 = get_profile("full"), get_profile("full", student="mpnet-l3")
    l2 = get_profile("full", student="mpnet-l2")
    assert l3.student == "mpnet-l3" and full.student == "static"  # one default student everywhere
    assert l3.distill_phases == full.distill_phases and l3.distill_minutes == l2.distill_minutes
    assert l2.distill_steps == (1200, 1800) and full.distill_steps == (2000, 600)
    assert get_profile("full", student=None) == full


def test_a_student_of_another_family_brings_its_family_recipe():
    demo = get_profile("demo")
    assert demo.student == "static" and demo.distill_phases == ("2", "3") and demo.distill_extra_web > 0
    cut = get_profile("demo", student="mpnet-l2")
    # the transformer's demo recipe: phase 3 alone, 500 steps, no extra phase-2 texts to encode
    assert cut.distill_phases == ("3",) and cut.distill_steps == (0, 500) and cut.distill_extra_web == 0
    assert get_profile("demo", student="static-head").distill_phases == demo.distill_phases
    # what the caller sets still wins over the family's recipe
    assert get_profile("demo", student="mpnet-l2", distill_steps=(0, 7)).distill_steps == (0, 7)

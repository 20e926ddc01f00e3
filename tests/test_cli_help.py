"""Every `hlm` command's --help: exits 0, calls itself by its hlm name, shows its options, and
says what the code does today (issue #26, item 7: `hlm bench-encoders --help` showed no
arguments, `hlm loadtest --help` called itself `python -m loadtest`, `hlm build --help` named
a closed-form student as the default). Run through the real CLI in a subprocess."""

from __future__ import annotations

import re

import pytest

from hlm.cli import app
from models.profiles import PROFILES, get_profile

pytestmark = pytest.mark.timeout(300)


def commands() -> list[tuple[str, ...]]:
    out = [(cmd.name or cmd.callback.__name__.replace("_", "-"),) for cmd in app.registered_commands]
    for group in app.registered_groups:
        out += [(group.name, cmd.name or cmd.callback.__name__) for cmd in group.typer_instance.registered_commands]
    return out


def help_of(run_hlm, *command: str) -> str:
    done = run_hlm(*command, "--help", COLUMNS="200")
    assert done.returncode == 0, done.stderr
    return re.sub(r"\s+", " ", done.stdout.replace("│", " "))


def test_the_command_list_is_the_one_tested():
    names = {c[0] for c in commands()}
    assert {"build", "distill", "eval", "serve", "query", "loadtest", "bench-encoders", "verify", "index"} <= names
    assert ("index", "push") in commands() and ("index", "agreement") in commands()


@pytest.mark.parametrize("command", commands(), ids=" ".join)
def test_every_help_exits_0_names_itself_and_shows_its_options(run_hlm, command):
    text = help_of(run_hlm, *command)
    assert re.search(r"usage: (hlm|python -m hlm\.cli) " + re.escape(" ".join(command)), text, re.IGNORECASE), text[:300]
    assert "python -m loadtest" not in text
    assert re.search(r"(^| )--[a-z]", text), f"no options shown: {text[:300]}"


def test_the_passthrough_commands_show_their_own_arguments(run_hlm):
    bench = help_of(run_hlm, "bench-encoders")
    assert "usage: hlm bench-encoders" in bench and "--curve" in bench and "artifact" in bench
    loadtest = help_of(run_hlm, "loadtest")
    assert "usage: hlm loadtest" in loadtest and all(sub in loadtest for sub in ("run", "sweep", "compare", "promcheck"))
    assert "usage: hlm loadtest compare" in help_of(run_hlm, "loadtest", "compare")


def test_build_and_distill_say_todays_defaults(run_hlm):
    build = help_of(run_hlm, "build")
    for name in PROFILES:  # every profile is described, none invented
        assert name in build
    assert get_profile("demo").student == "static" and "static student trained in the build" in build
    assert "default: closed-form" not in build and "~15 min" not in build
    distill = help_of(run_hlm, "distill")
    full = get_profile("full")
    assert full.student == "static" and "static (default" in distill
    s2, s3 = full.distill_steps
    assert f"static {s2:,}" in distill and f"static {s3:,}" in distill
    t2, t3 = get_profile("full", student="mpnet-l2").distill_steps
    assert f"transformer {t2:,}" in distill and f"transformer {t3:,}" in distill

"""Faults during a build: SIGKILL in the middle leaves the previous verified artifact (or
nothing) in place and no partial folder that looks complete; the rerun resumes from the
embedding cache and finishes a verified artifact.

One kill and one full rerun of `hlm build --profile small` (~1-2 min on 2 cores).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from artifact.manifest import ArtifactError, verify

from .conftest import clone_artifact

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KILL_AT = "[build] export"  # the student is fitted; ONNX files are being written into the staging folder


def build_cmd(out, data_dir):
    return [sys.executable, "-m", "hlm.cli", "build", "--profile", "small", "--out", str(out),
            "--data-dir", str(data_dir), "--allow-below-gate"]


def step_seconds(log: str, step: str) -> float | None:
    match = re.search(rf"\[build\] {step} done in ([0-9.]+) s", log)
    return float(match.group(1)) if match else None


def test_a_killed_build_leaves_the_old_artifact_and_the_rerun_resumes(small_artifact, data_dir, tmp_path):
    out = clone_artifact(small_artifact, tmp_path / "art")
    previous = verify(out)["artifact_sha256"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HLM_") or k in ("HLM_DATA_DIR", "HLM_CACHE_DIR")}
    env["PYTHONUNBUFFERED"] = "1"

    proc = subprocess.Popen(build_cmd(out, data_dir), cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen, deadline = [], time.monotonic() + 400
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith(KILL_AT) or time.monotonic() > deadline:
                break
        time.sleep(1.0)  # let it write part of the export
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    first = "".join(seen)
    assert any(line.startswith(KILL_AT) for line in seen), first[-3000:]
    assert proc.returncode == -signal.SIGKILL

    # The previous artifact is untouched and still verifies; no staging folder looks complete.
    assert verify(out)["artifact_sha256"] == previous
    partials = [p for p in tmp_path.iterdir() if p.name.startswith(".art.partial-")]
    assert partials, list(tmp_path.iterdir())
    for partial in partials:
        assert not (partial / "manifest.json").exists()
        with pytest.raises(ArtifactError):
            verify(partial)

    # The rerun resumes: the teacher vectors come from the embedding cache, the artifact completes.
    rerun = subprocess.run(build_cmd(out, data_dir), cwd=REPO, env=env, capture_output=True, text=True, timeout=800)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    manifest = verify(out)
    assert manifest["index"]["count"] > 0 and not (out / "manifest.json").is_symlink()
    teacher_first, teacher_rerun = step_seconds(first, "teacher"), step_seconds(rerun.stdout, "teacher")
    print(f"\nteacher step: {teacher_first} s before the kill, {teacher_rerun} s on the rerun (cache)")
    assert teacher_rerun is not None and teacher_rerun < 120

"""Faults during a build: SIGKILL in the middle leaves the previous verified artifact (or
nothing) in place and no partial folder that looks complete; the rerun resumes from the
embedding cache and finishes a verified artifact.

One kill and one full rerun of `hlm build --profile small` (~1-2 min on 2 cores), on an
embedding cache of its own that starts empty, so what the rerun finds there is what the
killed build committed. "Resumes" is counted, not timed: no vector the killed build stored
is encoded again by the rerun.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from artifact.manifest import ArtifactError, verify

from .conftest import clone_artifact

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KILL_AT = "[build] export"  # the student is fitted; ONNX files are about to be written into the staging folder


def build_cmd(out, data_dir):
    return [sys.executable, "-m", "hlm.cli", "build", "--profile", "small", "--out", str(out),
            "--data-dir", str(data_dir), "--allow-below-gate"]


def empty_cache(folder: Path) -> Path:
    """A cache folder with no embeddings; the reassembled teacher is shared (read-only use)."""
    from models.model_files import CACHE_DIR

    folder.mkdir()
    (folder / "models").symlink_to((CACHE_DIR / "models").resolve())
    return folder


def cache_rows(cache: Path) -> dict[str, dict[bytes, int]]:
    """{embedding cache file: {text key: rowid}}. A vector stored again (INSERT OR REPLACE)
    gets a new rowid above every earlier one, so rowids show what each run wrote."""
    out = {}
    for path in sorted((cache / "embeddings").glob("*.sqlite")):
        db = sqlite3.connect(path)
        try:
            out[path.name] = dict(db.execute("SELECT key, rowid FROM vectors"))
        finally:
            db.close()
    return out


def test_a_killed_build_leaves_the_old_artifact_and_the_rerun_resumes(small_artifact, data_dir, tmp_path):
    from models.inputs import select_inputs
    from models.profiles import get_profile

    out = clone_artifact(small_artifact, tmp_path / "art")
    previous = verify(out)["artifact_sha256"]
    cache = empty_cache(tmp_path / "cache")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HLM_") or k == "HLM_DATA_DIR"}
    env.update(PYTHONUNBUFFERED="1", HLM_CACHE_DIR=str(cache))

    proc = subprocess.Popen(build_cmd(out, data_dir), cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen, deadline = [], time.monotonic() + 400
    exported = None
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith(KILL_AT) or time.monotonic() > deadline:
                break
        # Killed once the export has begun writing: the student's ONNX file is in the staging
        # folder (evidence, not a guess after a sleep), before its int8 copy and the manifest.
        while exported is None and proc.poll() is None and time.monotonic() < deadline:
            exported = next(iter(tmp_path.glob(".art.partial-*/student/model.onnx")), None)
            if exported is None:
                time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    first = "".join(seen)
    assert any(line.startswith(KILL_AT) for line in seen), first[-3000:]
    assert proc.returncode == -signal.SIGKILL
    assert exported is not None, "the export never wrote the student's ONNX file before the deadline"
    assert not (exported.parent.parent / "manifest.json").exists()

    # The previous artifact is untouched and still verifies; no staging folder looks complete.
    assert verify(out)["artifact_sha256"] == previous
    partials = [p for p in tmp_path.iterdir() if p.name.startswith(".art.partial-")]
    assert partials, list(tmp_path.iterdir())
    for partial in partials:
        assert not (partial / "manifest.json").exists()
        with pytest.raises(ArtifactError):
            verify(partial)

    # What the killed build committed: the teacher's vectors of every keyword and query (its
    # teacher step had finished) and the student base's vectors of the fit texts.
    killed = cache_rows(cache)
    inputs = select_inputs(get_profile("small"), data_dir)
    texts = inputs.keyword_texts + inputs.fit_queries + inputs.heldout_queries
    keys = {hashlib.sha1(t.encode("utf-8")).digest() for t in texts}
    assert len(killed) == 2, list(killed)  # one cache per model: the teacher's and MiniLM's
    teacher_file = next(name for name in killed if name.startswith("mpnet-"))
    assert keys <= set(killed[teacher_file]), "the killed build had not committed the teacher's vectors"

    # The rerun resumes: it encodes nothing the killed build stored, and completes the artifact.
    rerun = subprocess.run(build_cmd(out, data_dir), cwd=REPO, env=env, capture_output=True, text=True, timeout=800)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    manifest = verify(out)
    assert manifest["index"]["count"] == len(inputs.keyword_texts) and not (out / "manifest.json").is_symlink()
    after = cache_rows(cache)
    assert set(after) == set(killed)  # no cache under another key: the same models were recognised
    for name, rows in killed.items():
        top = max(rows.values())
        rewritten = [key for key, rowid in after[name].items() if key in rows and rowid > top]
        assert rewritten == [], f"{name}: the rerun encoded {len(rewritten)} texts again"
        assert {key: rowid for key, rowid in after[name].items() if key in rows} == rows
    # What the rerun did encode is only what the killed build never reached (the gate's texts).
    added = set(after[teacher_file]) - set(killed[teacher_file])
    assert added and not added & keys
    print(f"\nrerun: {sum(map(len, killed.values()))} vectors reused, {len(added)} new (gate texts)")

"""The `hlm` commands the README lists, run as a user runs them (`python -m hlm.cli` in a
subprocess), on small real inputs: verify, build --if-missing, build --student-checkpoint,
distill, export-student, eval, bench-encoders.

The trained student and the artifact built around it are the session fixtures of
tests/conftest.py (``student_checkpoint``, ``unservable_artifact``); what is checked here is
what each command promises: its files, its output, and that its numbers agree with the
models they claim to describe (recomputed here), never how fast anything ran.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

TEXTS = ["cordless drill", "18 volt lithium ion battery pack", "how tall is the eiffel tower", "paint"]


def linked_copy(src: Path, dst: Path, copy: tuple[str, ...] = ()) -> Path:
    """``src`` as hard links (the manifest and ``copy`` copied, so they can be changed safely)."""
    for path in src.rglob("*"):
        if path.is_file():
            rel = path.relative_to(src).as_posix()
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            if rel == "manifest.json" or rel in copy:
                shutil.copy(path, dst / rel)
            else:
                os.link(path, dst / rel)
    return dst


def damaged(src: Path, dst: Path) -> Path:
    """A copy whose keyword store has one byte changed (same size)."""
    linked_copy(src, dst, copy=("index/keywords.tsv",))
    data = bytearray((dst / "index/keywords.tsv").read_bytes())
    data[-2] ^= 1
    (dst / "index/keywords.tsv").write_bytes(bytes(data))
    return dst


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def checkpoint_vectors(checkpoint: Path, texts: list[str]) -> np.ndarray:
    """The trained student in PyTorch, the reference every export must reproduce."""
    from models.distill.checkpoint import load_student_checkpoint, read_spec
    from models.distill.students import tokenizer_name
    from models.encoders import tokenizer_path
    from models.export import torch_encode

    spec, _ = read_spec(checkpoint)
    return torch_encode(load_student_checkpoint(checkpoint), tokenizer_path(tokenizer_name(spec)), texts)


# ---- hlm verify ---------------------------------------------------------------------------

def test_verify_accepts_a_sound_artifact(run_hlm, small_artifact):
    manifest = json.loads((small_artifact / "manifest.json").read_text())
    done = run_hlm("verify", str(small_artifact))
    assert done.returncode == 0, done.stderr
    assert done.stdout == (f"{small_artifact}: verified ({len(manifest['files'])} files, "
                           f"sha256 {manifest['artifact_sha256'][:12]}…)\n")


def test_verify_refuses_a_damaged_artifact_with_one_sentence(run_hlm, small_artifact, tmp_path):
    done = run_hlm("verify", str(damaged(small_artifact, tmp_path / "bad")))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("hlm verify: Artifact file index/keywords.tsv does not match its sha256")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


# ---- hlm build --if-missing (what `make serve` runs every time) --------------------------

def test_if_missing_builds_what_is_missing_and_keeps_what_verifies(run_hlm, unservable_artifact, command_log):
    # The fixture ran `build --if-missing` on a folder that did not exist: it built.
    assert "[build] summary" in command_log(unservable_artifact)
    before = (unservable_artifact / "manifest.json").read_bytes()
    done = run_hlm("build", "--profile", "small", "--out", str(unservable_artifact), "--if-missing")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{unservable_artifact} is already a verified artifact; nothing to build.\n"
    assert "[build]" not in done.stdout + done.stderr
    assert (unservable_artifact / "manifest.json").read_bytes() == before


def test_if_missing_does_not_take_a_damaged_artifact_for_built(run_hlm, small_artifact, tmp_path):
    """A damaged folder is not skipped: the command goes on to build (here it stops at once,
    at the profile name, so the test costs no build)."""
    bad = damaged(small_artifact, tmp_path / "bad")
    done = run_hlm("build", "--profile", "no-such-profile", "--out", str(bad), "--if-missing")
    assert done.returncode == 2
    assert "nothing to build" not in done.stdout
    assert done.stderr.startswith("hlm build: unknown profile 'no-such-profile'")


# ---- hlm distill, build --student-checkpoint ------------------------------------------------

def test_distill_writes_a_checkpoint_per_phase(student_checkpoint, command_log):
    from models.distill.checkpoint import read_spec

    root = student_checkpoint.parent
    log = command_log(student_checkpoint)
    assert f"phase2: {root / 'phase2'}" in log and f"phase3: {root / 'phase3'}" in log
    for phase in ("phase2", "phase3"):
        spec, info = read_spec(root / phase)
        assert spec.name == "mpnet-l2" and info["step"] == 2, info  # --steps2 2 --steps3 2
        assert (root / phase / "model.pt").is_file()


def test_build_around_a_trained_student_serves_that_student(unservable_artifact, student_checkpoint):
    from artifact.manifest import verify
    from retrieval.onnx_encoder import OnnxEncoder

    manifest = verify(unservable_artifact)
    student = manifest["encoders"]["student"]
    assert student["model"].startswith("mpnet-l2 trained by hlm distill") and "step 2" in student["model"]
    assert student["base_model"] == "sentence-transformers/all-mpnet-base-v2"
    onnx = OnnxEncoder(unservable_artifact / student["onnx"], unservable_artifact / student["tokenizer"],
                       student["max_length"]).encode_many(TEXTS)
    # the artifact's ONNX student is the checkpoint's model, not a fresh cut or a linear fit
    assert cosines(onnx, checkpoint_vectors(student_checkpoint, TEXTS)).min() > 0.9999


# ---- hlm export-student, hlm eval, hlm bench-encoders ---------------------------------------

@pytest.fixture(scope="module")
def exported(run_hlm, student_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "onnx"
    done = run_hlm("export-student", str(student_checkpoint), "--out", str(out))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return out, done


def test_export_student_writes_onnx_that_reproduces_the_checkpoint(exported, student_checkpoint):
    from retrieval.onnx_encoder import OnnxEncoder

    out, done = exported
    assert f"exported mpnet-l2 to {out}" in done.stdout
    fp32 = OnnxEncoder(out / "model.onnx", out / "tokenizer.json", 128).encode_many(TEXTS)
    int8 = OnnxEncoder(out / "model.int8.onnx", out / "tokenizer.json", 128).encode_many(TEXTS)
    assert cosines(fp32, checkpoint_vectors(student_checkpoint, TEXTS)).min() > 0.9999
    assert cosines(int8, fp32).min() > 0.95
    assert json.loads((out / "tokenizer.json").read_text())["truncation"]["max_length"] == 128


def test_eval_scores_every_model_on_the_same_queries(run_hlm, exported, student_checkpoint, tiny_data, tmp_path):
    onnx_dir, _ = exported
    done = run_hlm("eval", str(student_checkpoint), "--onnx-dir", str(onnx_dir), "--limit", "5",
               "--out", str(tmp_path / "eval"), data_dir=tiny_data)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    rows = report["rows"]
    name = f"mpnet-l2/{student_checkpoint.name}"
    assert {"teacher", "minilm_raw_own_space", name, "onnx_onnx_fp32", "onnx_onnx_int8"} <= set(rows), list(rows)
    assert report["dev_queries"] == 5
    assert all(rows[r]["queries"] == 5 for r in ("teacher", "minilm_raw_own_space"))
    for row in rows.values():
        assert 0.0 <= row["ndcg_at_10"] <= 1.0
        assert row["ndcg_at_10_ratio"] == pytest.approx(row["ndcg_at_10"] / rows["teacher"]["ndcg_at_10"])
    # the same model scored twice (PyTorch checkpoint, its fp32 export) scores the same, up to
    # a near-tie swapped by float noise (the other models in this table differ by 0.1 or more)
    assert rows["onnx_onnx_fp32"]["ndcg_at_10"] == pytest.approx(rows[name]["ndcg_at_10"], abs=0.02)
    assert "| teacher |" in (tmp_path / "eval" / "eval.md").read_text()


def test_bench_encoders_measures_each_encoder_against_the_teacher(run_hlm, small_artifact, exported, data_dir, tmp_path):
    onnx_dir, _ = exported
    out = tmp_path / "bench.json"
    done = run_hlm("bench-encoders", str(small_artifact), "--queries", "6",
               "--extra", f"cut={onnx_dir / 'model.onnx'}:{onnx_dir / 'tokenizer.json'}", "--out", str(out),
               data_dir=data_dir)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["meta"]["queries"] == 6 and doc["meta"]["artifact"] == str(small_artifact)
    rows = doc["rows"]
    assert set(rows) == {"teacher_fp32", "student_fp32", "student_int8", "cut"}
    teacher = rows["teacher_fp32"]
    for row in rows.values():  # the ratios are the ratios of the figures beside them, whatever the speed
        assert row["batch1_median_ms"] > 0 and row["batch32_texts_per_s"] > 0
        assert row["speedup_batch1_vs_teacher"] == pytest.approx(teacher["batch1_median_ms"] / row["batch1_median_ms"])
        assert row["throughput_batch32_vs_teacher"] == pytest.approx(row["batch32_texts_per_s"] / teacher["batch32_texts_per_s"])
    assert "| cut |" in done.stdout

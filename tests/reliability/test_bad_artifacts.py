"""Bad artifacts: each is refused with one sentence naming the problem, before serving.

Variants are hard-linked clones of the small artifact with one thing broken; the ones that
re-write the manifest to vouch for the broken file are what a checksum alone misses.
The same checks run at start-up and on every reload (see test_reload.py).
"""

from __future__ import annotations

import json

import pytest

from artifact.manifest import ArtifactError
from service.metrics import Metrics
from service.loader import load_manifest
from service.runtime import Runtime
from service.settings import Settings

from .conftest import clone_artifact, rewrite_manifest, swap_tokenizer


def load(root, encoders=("student", "teacher")):
    settings = Settings(artifact_dir=root)
    runtime = Runtime(settings, load_manifest(settings), Metrics(), root=root)
    runtime.load(encoders)
    return runtime


def one_sentence(exc: ArtifactError) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text and text.endswith((".", ")")), text
    return text


def missing_file(src, dst):
    clone_artifact(src, dst)
    (dst / "index/keywords.tsv").unlink()


def wrong_checksum(src, dst):
    clone_artifact(src, dst, copy=("index/keywords.tsv",))
    data = bytearray((dst / "index/keywords.tsv").read_bytes())
    data[-2] ^= 1
    (dst / "index/keywords.tsv").write_bytes(bytes(data))


def truncated_index(src, dst):
    clone_artifact(src, dst, copy=("index/keywords.hnsw",))
    path = dst / "index/keywords.hnsw"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def truncated_index_vouched(src, dst):
    truncated_index(src, dst)
    rewrite_manifest(dst, ("index/keywords.hnsw",))


def dimension_mismatch(src, dst):
    clone_artifact(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["index"]["dim"] = 384
    for enc in manifest["encoders"].values():
        enc["dim"] = 384
    rewrite_manifest(dst, index=manifest["index"], encoders=manifest["encoders"])


def index_dimension_mismatch(src, dst):
    # Only the index claims another dimension: verify() itself refuses the inconsistency.
    clone_artifact(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["index"]["dim"] = 384
    rewrite_manifest(dst, index=manifest["index"])


def unreadable_manifest(src, dst):
    clone_artifact(src, dst)
    (dst / "manifest.json").write_bytes(b'{"format_version": 1, "files": {\xff')


def keyword_count_mismatch(src, dst):
    clone_artifact(src, dst, copy=("index/keywords.tsv",))
    lines = (dst / "index/keywords.tsv").read_text().splitlines(keepends=True)
    (dst / "index/keywords.tsv").write_text("".join(lines[:-1]))
    rewrite_manifest(dst, ("index/keywords.tsv",))


def forged_artifact_sha256(src, dst):
    # Every file intact, only the top-level hash (what /v1/info and the metrics report) claims another build.
    clone_artifact(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["artifact_sha256"] = "0" * 64
    (dst / "manifest.json").write_text(json.dumps(manifest))


CASES = [
    (missing_file, ("student",), "Artifact file index/keywords.tsv named in the manifest is missing"),
    (wrong_checksum, ("student",), "Artifact file index/keywords.tsv does not match its sha256"),
    (truncated_index, ("student",), "Artifact file index/keywords.hnsw is"),
    (truncated_index_vouched, ("student",), "The index index/keywords.hnsw cannot be loaded"),
    (dimension_mismatch, ("student",), "The student ONNX model outputs 768-d vectors but the index holds 384-d vectors."),
    (index_dimension_mismatch, ("student",), "outputs 768-d vectors but the index holds 384-d vectors."),
    (unreadable_manifest, ("student",), "manifest.json is not readable JSON"),
    (keyword_count_mismatch, ("student",), "The index holds 500 vectors but the keyword store has 499 rows"),
    (forged_artifact_sha256, ("student",), "The manifest's artifact_sha256 is not the hash of the files it lists"),
    (lambda s, d: swap_tokenizer(s, d), ("student",),
     "The student tokenizer student/tokenizer.json does not belong to the model student/model.int8.onnx: "
     "its tokenizer has 30527 tokens but the model's word embedding has fewer rows."),
]


@pytest.mark.parametrize("make,encoders,sentence", CASES, ids=[c[0].__name__ if c[0].__name__ != "<lambda>" else
                                                               "tokenizer_mismatch" for c in CASES])
def test_a_bad_artifact_is_refused_with_one_sentence(small_artifact, tmp_path, make, encoders, sentence):
    bad = tmp_path / "bad"
    make(small_artifact, bad)
    with pytest.raises(ArtifactError) as caught:
        load(bad, encoders)
    assert sentence in one_sentence(caught.value)


def test_the_teacher_tokenizer_in_the_student_slot_the_other_way_round(small_artifact, tmp_path):
    # The student's (smaller) tokenizer given to the teacher: every id is in range, the
    # words are not; the probe sees the model has more rows than the tokenizer has tokens.
    from .conftest import clone_artifact as clone
    bad = clone(small_artifact, tmp_path / "bad", copy=("teacher/tokenizer.json",))
    (bad / "teacher/tokenizer.json").write_bytes((small_artifact / "student/tokenizer.json").read_bytes())
    rewrite_manifest(bad, ("teacher/tokenizer.json",))
    with pytest.raises(ArtifactError, match="teacher tokenizer .* has 30522 tokens but the model's word embedding has more rows"):
        load(bad)


def test_the_real_artifact_passes_every_check(small_artifact):
    runtime = load(small_artifact)
    assert set(runtime.slots) == {"student", "teacher"} and len(runtime.index) > 0


@pytest.mark.slow
def test_a_tokenizer_mismatch_stops_the_server(start_server, small_artifact, tmp_path):
    srv = start_server(artifact=swap_tokenizer(small_artifact, tmp_path / "bad"))
    assert srv.proc.wait(120) == 2
    log = srv.log()
    assert "start-up stopped: The student tokenizer student/tokenizer.json does not belong to the model" in log
    assert "Traceback" not in log

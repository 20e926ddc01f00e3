"""The artifact contract: verification refuses what the manifest does not vouch for."""

import json
import shutil

import pytest

from artifact.manifest import ArtifactError, staged_folder, verify, write_manifest


def make_artifact(root):
    (root / "student").mkdir(parents=True)
    (root / "teacher").mkdir()
    (root / "index").mkdir()
    for rel in ("student/model.onnx", "student/tokenizer.json", "teacher/model.onnx",
                "teacher/tokenizer.json", "index/keywords.hnsw", "index/keywords.tsv"):
        (root / rel).write_bytes(rel.encode() * 10)
    enc = lambda name: {"onnx": f"{name}/model.onnx", "tokenizer": f"{name}/tokenizer.json", "dim": 8}
    return write_manifest(root, {
        "encoders": {"student": enc("student"), "teacher": enc("teacher")},
        "index": {"path": "index/keywords.hnsw", "store": "index/keywords.tsv", "dim": 8},
    })


def test_verify_accepts_a_consistent_folder(tmp_path):
    manifest = make_artifact(tmp_path / "a")
    assert verify(tmp_path / "a")["artifact_sha256"] == manifest["artifact_sha256"]


@pytest.mark.parametrize("damage, message", [
    (lambda r: (r / "teacher/model.onnx").unlink(), "teacher/model.onnx named in the manifest is missing"),
    (lambda r: (r / "index/keywords.hnsw").write_bytes(b"x"), "truncated or replaced"),
    (lambda r: (r / "student/model.onnx").write_bytes(b"Z" * len(b"student/model.onnx" * 10)), "does not match its sha256"),
    (lambda r: (r / "manifest.json").write_text("{not json"), "is not readable JSON"),
    (lambda r: (r / "manifest.json").unlink(), "has no manifest.json"),
])
def test_verify_refuses_damage_with_one_sentence(tmp_path, damage, message):
    root = tmp_path / "a"
    make_artifact(root)
    damage(root)
    with pytest.raises(ArtifactError, match=message) as info:
        verify(root)
    assert "\n" not in str(info.value)


def test_dimension_mismatch_is_refused(tmp_path):
    root = tmp_path / "a"
    manifest = make_artifact(root)
    manifest["encoders"]["student"]["dim"] = 384
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="student encoder outputs 384-d vectors but the index holds 8-d"):
        verify(root)


def test_staged_folder_leaves_nothing_on_failure_and_keeps_old(tmp_path):
    final = tmp_path / "art"
    make_artifact(final)
    with pytest.raises(RuntimeError):
        with staged_folder(final) as stage:
            (stage / "half").write_text("partial")
            raise RuntimeError("killed mid-build")
    verify(final)  # the old artifact is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["art"]  # no partial folder left


def test_staged_folder_replaces_on_success(tmp_path):
    final = tmp_path / "art"
    make_artifact(final)
    with staged_folder(final) as stage:
        shutil.copytree(final, stage, dirs_exist_ok=True)
        (stage / "extra.txt").write_text("new")
    assert (final / "extra.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_partial_folders_of_dead_builds_are_cleaned(tmp_path):
    final = tmp_path / "art"
    dead = tmp_path / ".art.partial-999999999-abc"  # no such process
    dead.mkdir()
    alive = tmp_path / f".art.partial-{__import__('os').getpid()}-def"
    alive.mkdir()
    with staged_folder(final) as stage:
        (stage / "x").write_text("1")
    assert not dead.exists() and alive.exists() and (final / "x").exists()

"""The artifact contract: verification refuses what the manifest does not vouch for."""

import json
import os
import shutil

import pytest

from artifact.manifest import ArtifactError, artifact_hash, sha256_file, staged_folder, verify, write_manifest


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


# ---- what a hand-edited or hostile manifest may claim ----------------------------------

def edit(root, change):
    """Apply ``change`` to the manifest as a forger would (the file hashes left as they are)."""
    manifest = json.loads((root / "manifest.json").read_text())
    change(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))


def refused(root, message):
    with pytest.raises(ArtifactError, match=message) as info:
        verify(root)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_another_format_version_is_refused(tmp_path, version):
    make_artifact(tmp_path / "a")
    edit(tmp_path / "a", lambda m: m.update(format_version=version))
    refused(tmp_path / "a", "is not a version-1 manifest")


@pytest.mark.parametrize("files", [{}, [], None])
def test_an_empty_file_list_is_refused(tmp_path, files):
    make_artifact(tmp_path / "a")
    edit(tmp_path / "a", lambda m: m.update(files=files))
    refused(tmp_path / "a", "lists no files")


def test_a_referenced_file_that_is_not_listed_is_refused(tmp_path):
    root = tmp_path / "a"
    make_artifact(root)

    def unlist(m):
        del m["files"]["student/tokenizer.json"]
        m["artifact_sha256"] = artifact_hash(m["files"], m)  # consistent, so only the reference is wrong

    edit(root, unlist)
    refused(root, r"encoders.student.tokenizer \('student/tokenizer.json'\) is not one of its files")


@pytest.mark.parametrize("encoder", ["student", "teacher"])
def test_a_missing_encoder_is_refused(tmp_path, encoder):
    make_artifact(tmp_path / "a")
    edit(tmp_path / "a", lambda m: m["encoders"].pop(encoder))
    refused(tmp_path / "a", f"describes no {encoder} encoder")


def test_a_forged_artifact_sha256_is_refused(tmp_path):
    root = tmp_path / "a"
    manifest = make_artifact(root)
    forged = "0" * 64
    edit(root, lambda m: m.update(artifact_sha256=forged))
    refused(root, "artifact_sha256 is not the hash of the files it lists")
    # and recomputing it from the files is what the writer does: the real one passes again
    edit(root, lambda m: m.update(artifact_sha256=artifact_hash(m["files"], m)))
    assert verify(root)["artifact_sha256"] == manifest["artifact_sha256"]


def test_a_forged_hash_is_refused_without_checksums_too(tmp_path):
    """The service may skip the per-file sha256 (HLM_VERIFY_CHECKSUMS=false); the top-level
    hash is still recomputed from the listed hashes, so it still cannot lie."""
    make_artifact(tmp_path / "a")
    edit(tmp_path / "a", lambda m: m.update(artifact_sha256="f" * 64))
    with pytest.raises(ArtifactError, match="artifact_sha256 is not the hash"):
        verify(tmp_path / "a", checksums=False)


def relist(root, rel, target):
    """List ``rel`` (whose bytes are ``target``'s) in place of the student model, hashes re-vouched."""
    def change(m):
        info = m["files"].pop("student/model.onnx")
        m["files"][rel] = {"sha256": sha256_file(target), "bytes": target.stat().st_size} if target.is_file() else info
        m["encoders"]["student"]["onnx"] = rel
        m["artifact_sha256"] = artifact_hash(m["files"], m)

    edit(root, change)


@pytest.mark.parametrize("rel", ["../outside.onnx", "student/../../outside.onnx", "ABSOLUTE"])
def test_paths_outside_the_folder_are_refused(tmp_path, rel):
    root = tmp_path / "a"
    make_artifact(root)
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(b"weights from elsewhere")
    rel = str(outside) if rel == "ABSOLUTE" else rel
    relist(root, rel, outside)
    refused(root, "a path outside the artifact folder")


def test_a_symlink_leading_outside_the_folder_is_refused(tmp_path):
    root = tmp_path / "a"
    make_artifact(root)
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(b"weights from elsewhere")
    (root / "student/model.onnx").unlink()
    os.symlink(outside, root / "student/model.onnx")
    relist(root, "student/model.onnx", outside)  # the manifest vouches for the target's bytes
    refused(root, "student/model.onnx leads outside the artifact folder")


def test_symlinks_inside_the_folder_and_a_symlinked_folder_are_accepted(tmp_path):
    """Deploys re-point a symlink to the folder; a file may link to another file of the folder."""
    root = tmp_path / "a"
    make_artifact(root)
    (root / "teacher/tokenizer.json").unlink()
    os.symlink("../student/tokenizer.json", root / "teacher/tokenizer.json")
    edit(root, lambda m: (m["files"].update({"teacher/tokenizer.json": m["files"]["student/tokenizer.json"]}),
                          m.update(artifact_sha256=artifact_hash(m["files"], m))))
    os.symlink(root, tmp_path / "current")
    assert verify(tmp_path / "current")["files"]["teacher/tokenizer.json"]

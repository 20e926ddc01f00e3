"""The artifact contract's gaps (issue #28, 11): what artifact_sha256 covers, the attributes
file, and the time between hashing a file and loading it.

- ``hash_version`` 2 (every build since): artifact_sha256 covers every manifest field, so a
  hand-edited ``servable``, ``gate``, index ``ef`` or ``attributes`` is refused like an edited
  file. A manifest without the field (built before) still verifies on its files, as it did.
- ``index.attributes`` is loaded, so it must be a listed file (hashed, inside the folder).
- ``FilePins``: the identity of each file as hashed, checked again after loading: a file
  replaced between verify and load is refused, at start-up and on a reload.
- ``HLM_ARTIFACT_SHA256`` (how ``--workers N`` pins a replacement worker) refuses another artifact.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import httpx
import pytest

from artifact.manifest import HASH_VERSION, MANIFEST_NAME, ArtifactError, FilePins, artifact_hash, verify, write_manifest


def make_artifact(root: Path, **fields) -> dict:
    for rel in ("student/model.onnx", "student/tokenizer.json", "teacher/model.onnx", "teacher/tokenizer.json",
                "index/keywords.hnsw", "index/keywords.tsv", "index/attributes.json"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode() * 10)
    enc = lambda name: {"onnx": f"{name}/model.onnx", "tokenizer": f"{name}/tokenizer.json", "dim": 8}
    return write_manifest(root, {
        "encoders": {"student": enc("student") | {"default_precision": "fp32"}, "teacher": enc("teacher")},
        "index": {"path": "index/keywords.hnsw", "store": "index/keywords.tsv", "dim": 8, "ef": 64},
        "servable": False, "gate": {"passed": False, "overridden": False, "message": "below the gate"},
    } | fields)


def edit(root: Path, change) -> None:
    path = root / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_a_new_manifest_is_hash_version_2_and_verifies(tmp_path):
    manifest = make_artifact(tmp_path)
    assert manifest["hash_version"] == HASH_VERSION
    assert verify(tmp_path)["artifact_sha256"] == manifest["artifact_sha256"] == artifact_hash(manifest["files"], manifest)


@pytest.mark.parametrize("change", [
    lambda m: m.update(servable=True),  # an unservable build made servable by hand
    lambda m: m["gate"].update(overridden=True),
    lambda m: m["index"].update(ef=8),
    lambda m: m["index"].update(attributes="index/attributes.json"),
    lambda m: m["encoders"]["student"].update(default_precision="int8"),
])
def test_an_edited_field_is_refused_like_an_edited_file(tmp_path, change):
    make_artifact(tmp_path)
    edit(tmp_path, change)
    with pytest.raises(ArtifactError, match="artifact_sha256 is not the hash"):
        verify(tmp_path)


def test_a_manifest_from_before_hash_version_2_still_verifies_on_its_files(tmp_path):
    make_artifact(tmp_path)

    def downgrade(m):
        del m["hash_version"]
        m["artifact_sha256"] = artifact_hash(m["files"])

    edit(tmp_path, downgrade)
    assert "hash_version" not in verify(tmp_path)


def test_an_unknown_hash_version_is_refused(tmp_path):
    make_artifact(tmp_path)
    edit(tmp_path, lambda m: m.update(hash_version=3))
    with pytest.raises(ArtifactError, match="hash_version 3 is unknown"):
        verify(tmp_path)


@pytest.mark.parametrize("attributes", ["../outside.json", "index/not-listed.json", "/etc/passwd"])
def test_index_attributes_must_be_a_listed_file(tmp_path, attributes):
    root = tmp_path / "a"
    root.mkdir()
    make_artifact(root)
    (tmp_path / "outside.json").write_text("{}")
    (root / "index/not-listed.json").write_text("{}")

    def point(m):
        m["index"]["attributes"] = attributes
        m["artifact_sha256"] = artifact_hash(m["files"], m)  # consistent: only the reference is wrong

    edit(root, point)
    with pytest.raises(ArtifactError, match="index.attributes .* is not one of its files"):
        verify(root)


def test_pins_refuse_a_file_replaced_after_it_was_hashed(tmp_path):
    make_artifact(tmp_path)
    pins = FilePins()
    verify(tmp_path, pins=pins)
    pins.check(tmp_path)  # nothing changed
    store = tmp_path / "index/keywords.tsv"
    replacement = tmp_path / "index/new.tsv"
    replacement.write_bytes(store.read_bytes())  # the same bytes, another file: what was hashed is gone
    os.replace(replacement, store)
    with pytest.raises(ArtifactError, match="index/keywords.tsv changed after it was verified"):
        pins.check(tmp_path)


# ---- the service: the pins at start-up and on reload, HLM_ARTIFACT_SHA256 ----

@pytest.fixture()
def clone(small_artifact, tmp_path):
    """The small artifact's files hard-linked, the store copied (so a test may replace it)."""
    root = tmp_path / "art"
    for path in small_artifact.rglob("*"):
        if path.is_file():
            rel = path.relative_to(small_artifact)
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            if rel.as_posix() in (MANIFEST_NAME, "index/keywords.tsv"):
                (root / rel).write_bytes(path.read_bytes())
            else:
                os.link(path, root / rel)
    return root


def swap_store_during_load(monkeypatch, root: Path) -> None:
    """The next Runtime.load first replaces the keyword store: texts prefixed "X: ", same rows."""
    from service.runtime import Runtime

    original = Runtime.load

    def load(self, *args, **kwargs):
        store = root / "index/keywords.tsv"
        lines = store.read_text(encoding="utf-8").splitlines()
        rows = [lines[0]] + [f"{i}\tX: {t}" for i, _, t in (line.partition("\t") for line in lines[1:])]
        fresh = store.with_name("swapped.tsv")
        fresh.write_text("\n".join(rows) + "\n", encoding="utf-8")
        os.replace(fresh, store)
        monkeypatch.setattr(Runtime, "load", original)  # once
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Runtime, "load", load)


def test_a_store_replaced_between_verify_and_load_stops_start_up(clone, monkeypatch):
    from service.main import create_app
    from service.settings import Settings

    swap_store_during_load(monkeypatch, clone)

    async def main():
        app = create_app(Settings(artifact_dir=clone, warmup_rounds=0, reload_on_sighup=False))
        state = app.state.hlm.state
        async with app.router.lifespan_context(app):
            for _ in range(1200):
                if state.phase.value in ("ready", "failed"):
                    break
                await asyncio.sleep(0.1)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
                return (await client.get("/readyz")).json()

    body = asyncio.run(main())
    assert body["status"] == "failed" and "index/keywords.tsv changed after it was verified" in body["detail"], body


def test_a_store_replaced_between_verify_and_load_refuses_the_reload(clone, monkeypatch):
    from service.main import create_app
    from service.settings import Settings

    async def main():
        token = "contract-token"
        app = create_app(Settings(artifact_dir=clone, admin_token=token, warmup_rounds=0, reload_on_sighup=False))
        state = app.state.hlm.state
        async with app.router.lifespan_context(app):
            for _ in range(1200):
                if state.phase.value in ("ready", "failed"):
                    break
                await asyncio.sleep(0.1)
            assert state.phase.value == "ready"
            swap_store_during_load(monkeypatch, clone)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
                reload = await client.post("/admin/reload", headers={"Authorization": f"Bearer {token}"})
                search = await client.post("/v1/search", json={"query": "drill", "k": 5})
                return reload, search

    reload, search = asyncio.run(main())
    assert reload.status_code == 409 and "changed after it was verified" in reload.json()["error"]["message"]
    assert not any(h["text"].startswith("X: ") for h in search.json()["results"][0]["keywords"])


def test_a_pinned_sha256_refuses_another_artifact(small_artifact):
    from service.loader import load_manifest
    from service.settings import Settings

    sha = json.loads((small_artifact / MANIFEST_NAME).read_text())["artifact_sha256"]
    assert load_manifest(Settings(artifact_dir=small_artifact, artifact_sha256=sha, verify_checksums=False))
    other = "0" * 64
    with pytest.raises(ArtifactError, match=f"is {sha[:12]}, not {other[:12]} .HLM_ARTIFACT_SHA256.: it was replaced"):
        load_manifest(Settings(artifact_dir=small_artifact, artifact_sha256=other))

"""``hlm compact`` folds the live changes into a new artifact the service verifies and serves as is."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from artifact.manifest import read_manifest, verify
from retrieval.base import SearchParams
from retrieval.hnsw import HnswIndex
from retrieval.onnx_encoder import OnnxEncoder
from service.live.keywords import LiveKeywords, encode_texts
from service.metrics import Metrics

REPO = __import__("pathlib").Path(__file__).resolve().parents[3]


def test_compact_folds_upserts_deletes_and_attributes_into_a_verified_artifact(small_artifact, tmp_path):
    manifest = read_manifest(small_artifact)
    idx, spec = manifest["index"], manifest["encoders"]["teacher"]
    teacher = OnnxEncoder(small_artifact / spec["onnx"], small_artifact / spec["tokenizer"], 128, threads=1)
    index = HnswIndex(small_artifact / idx["path"], small_artifact / idx["store"], 768, 64)
    live = LiveKeywords(tmp_path / "state", Metrics(), snapshot_every=2)
    live.attach(index, teacher, manifest["files"][spec["onnx"]]["sha256"])
    texts = ["walnut bookshelf five tier", "solar path light stainless", "hd replacement title"]

    async def write() -> None:
        live.start(asyncio.get_running_loop())
        await live.submit(["kw:a", "kw:b"], texts[:2], [{"market": "en-US"}, {"market": "de-DE", "active": True}],
                          ["hd:100001", "mq:1"])
        await live.submit(["hd:100002"], texts[2:], [{"source": "hd", "market": "en-US"}], [])
        await live.submit(["kw:c"], ["cedar fence picket"], [{}], ["kw:b"])  # only in the log (snapshot after 2)

    asyncio.run(write())
    # Compact while the state folder is held (as by a running service): it reads, never takes it.
    out = tmp_path / "compacted"
    run = subprocess.run([sys.executable, "-m", "hlm.cli", "compact", "--artifact", str(small_artifact),
                          "--state-dir", str(tmp_path / "state"), "--out", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    live.close()

    folded = verify(out)
    assert folded["index"]["count"] == 500 - 2 + 2 and folded["live"]["folded_sequence"] == 3
    assert folded["artifact_sha256"] != manifest["artifact_sha256"]
    new = HnswIndex(out / idx["path"], out / idx["store"], 768, 64, attributes_path=out / folded["index"]["attributes"])
    new.verify()
    assert new.get("hd:100001") is None and new.get("mq:1") is None and new.get("kw:b") is None
    assert new.get("kw:a") == (texts[0], {"market": "en-US"})
    assert new.get("hd:100002") == (texts[2], {"source": "hd", "market": "en-US"})
    assert new.get("mq:2")[1] == {"source": "mq"} and new.get("kw:c") == ("cedar fence picket", {})
    rows = new.search(encode_texts(teacher, [texts[0], "cedar fence picket"]), SearchParams(1))
    assert [row[0].id for row in rows] == ["kw:a", "kw:c"]
    (row,) = new.search(encode_texts(teacher, ["bookshelf"]), SearchParams(5, filter={"market": "en-US"}))
    assert {h.id for h in row} == {"kw:a", "hd:100002"}


def test_a_snapshot_taken_while_compact_reads_the_state_costs_no_change(tmp_path, monkeypatch):
    """compact reads the snapshot, then the log; the service snapshotting (and emptying its log)
    in between left a log that began after a gap, and the gap's changes were lost while
    folded_sequence claimed them (#28 finding 13)."""
    import service.live.compact as compact_module
    from live_fakes import DictIndex, FakeEncoder

    encoder = FakeEncoder()
    live = LiveKeywords(tmp_path, Metrics(), snapshot_every=1000, niceness=0)
    live.attach(DictIndex(), encoder, "teacher-sha")

    def change(n: int, delete=()):  # what the writer thread does for one request
        ids = [f"kw:{n}"]
        live._do_change(ids, [f"text {n}"], [{"n": n}], list(delete), encoder.encode([f"text {n}"]).vectors, "teacher-sha")

    for n in (1, 2, 3):
        change(n)
    live._snapshot()
    for n in (4, 5, 6):
        change(n, delete=["kw:1"] if n == 5 else ())

    real = compact_module.read_snapshot
    between = []

    def read_then_the_service_snapshots(path):
        found = real(path)
        if not between:  # once: a snapshot at 6 empties the log, then one more change
            between.append(path.name)
            live._snapshot()
            change(7)
        return found

    monkeypatch.setattr(compact_module, "read_snapshot", read_then_the_service_snapshots)
    state = compact_module.read_state(tmp_path)
    live.close()
    assert between == ["snapshot-000000000003"]
    assert state.sequence == 7 and sorted(state.upserts) == [f"kw:{n}" for n in (2, 3, 4, 5, 6, 7)]
    assert state.deletes == {"kw:1"}

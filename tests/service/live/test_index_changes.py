"""Live changes on the real index and the real teacher (small artifact), in process.

What hnswlib's write side must keep: deleted ids never come back (filtered or not), filters
are exact and get k answers whenever k keywords match, recall@10 against exact search stays
>= 0.95 after 10% deletes + 10% adds; and the live set comes back after a restart
(snapshot + log replay), re-encoded when the artifact's teacher is another.
"""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest

from artifact.manifest import read_manifest
from retrieval.base import SearchParams
from retrieval.exact import recall_at_k
from retrieval.hnsw import HnswIndex
from retrieval.onnx_encoder import OnnxEncoder
from service.live.keywords import LiveKeywords, encode_texts
from service.metrics import Metrics

WORDS = ("cordless", "drill", "garden", "hose", "copper", "pipe", "led", "bulb", "oak", "cabinet", "paint", "roller",
         "patio", "heater", "brass", "faucet", "vinyl", "plank", "solar", "lantern", "steel", "shelf", "ceramic",
         "tile", "cedar", "fence", "electric", "mower", "glass", "door", "marble", "sink", "bamboo", "blind")


def phrases(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out: set[str] = set()
    while len(out) < n:
        out.add(" ".join(rng.sample(WORDS, 4)))
    return sorted(out)


@pytest.fixture(scope="module")
def artifact(small_artifact):
    return small_artifact, read_manifest(small_artifact)


@pytest.fixture(scope="module")
def teacher(artifact):
    root, manifest = artifact
    spec = manifest["encoders"]["teacher"]
    return OnnxEncoder(root / spec["onnx"], root / spec["tokenizer"], int(spec.get("max_length") or 128), threads=1)


def open_index(artifact, double_buffer: bool = False) -> HnswIndex:
    root, manifest = artifact
    idx = manifest["index"]
    return HnswIndex(root / idx["path"], root / idx["store"], int(idx["dim"]), int(idx.get("ef") or 64),
                     double_buffer=double_buffer)


BOTH = pytest.mark.parametrize("double_buffer", [False, True], ids=["one-graph", "double-buffer"])


@BOTH
def test_deletes_adds_and_filters_on_the_real_index(artifact, teacher, double_buffer):
    index = open_index(artifact, double_buffer)
    ids = [kid for kid, _, _ in index.keywords()]
    rng = random.Random(7)
    gone = set(rng.sample(ids, len(ids) // 10))
    new_texts = phrases(len(ids) // 10, seed=1)
    new_ids = [f"kw:{i}" for i in range(len(new_texts))]
    attrs = [{"market": "de-DE" if i % 5 == 0 else "en-US", "campaign": i % 7, "active": i % 2 == 0}
             for i in range(len(new_texts))]
    new_vectors = encode_texts(teacher, new_texts)
    keep_vectors = index.vectors_of([k for k in ids if k not in gone])
    deleted = index.apply(sorted(gone) + ["never-there"], new_ids, new_vectors, new_texts, attrs)
    assert deleted == len(gone) and len(index) == len(ids)
    live_ids = [k for k in ids if k not in gone] + new_ids
    live_vectors = np.vstack([keep_vectors, new_vectors])

    queries = encode_texts(teacher, phrases(100, seed=2) + new_texts[:20])
    found = [[h.id for h in row] for row in index.search(queries, SearchParams(10))]
    exact = np.argsort(-(queries @ live_vectors.T), axis=1)[:, :10]
    truth = [[live_ids[j] for j in row] for row in exact]
    assert recall_at_k(found, truth) >= 0.95
    # A query equal to a new keyword's text finds it first (the same teacher vector).
    assert [row[0] for row in found[100:]] == new_ids[:20]

    deleted_texts = [index_text for kid, index_text, _ in open_index(artifact).keywords() if kid in gone]
    gone_queries = encode_texts(teacher, deleted_texts[:30])
    for flt in (None, {"source": "hd"}, {"source": ["hd", "mq"]}):
        for row in index.search(gone_queries, SearchParams(20, filter=flt)):
            assert not {h.id for h in row} & gone
            assert len(row) == 20

    by_id = dict(zip(new_ids, attrs))
    cases = [({"market": "de-DE"}, lambda a: a.get("market") == "de-DE"),
             ({"market": "en-US", "active": True}, lambda a: a.get("market") == "en-US" and a.get("active") is True),
             ({"campaign": [3, 4]}, lambda a: a.get("campaign") in (3, 4)),
             ({"campaign": 1, "market": "de-DE"}, lambda a: a.get("campaign") == 1 and a.get("market") == "de-DE"),
             ({"active": 1}, lambda a: False),  # a boolean is not the number 1
             ({"source": "mq"}, None), ({"nope": "x"}, lambda a: False)]
    for flt, match in cases:
        matching = ({k for k in live_ids if k.startswith("mq:")} if match is None
                    else {k for k, a in by_id.items() if match(a)})
        for k in (5, 10, 40):
            rows = index.search(queries[:10], SearchParams(k, filter=flt))
            for row in rows:
                got = [h.id for h in row]
                assert set(got) <= matching, flt
                assert len(got) == min(k, len(matching)), (flt, k)  # k answers whenever k match
                assert len(set(got)) == len(got)


@BOTH
def test_an_upsert_of_an_existing_id_replaces_it_and_slots_are_reused(artifact, teacher, double_buffer):
    index = open_index(artifact, double_buffer)
    capacity = index.graph.get_max_elements()
    texts = phrases(30, seed=3)
    vectors = encode_texts(teacher, texts)
    for round_ in range(40):  # churn: 30 adds + 30 deletes a round, far past the headroom if slots leaked
        ids = [f"churn:{round_}:{i}" for i in range(30)]
        previous = [f"churn:{round_ - 1}:{i}" for i in range(30)] if round_ else []
        index.apply(previous, ids, vectors, texts, [{}] * 30)
    assert index.graph.get_max_elements() == capacity and len(index) == 500 + 30
    first = index.keywords()[0][0]
    index.apply([], [first], vectors[:1], [texts[0]], [{"market": "fr-FR"}])
    assert index.get(first) == (texts[0], {"market": "fr-FR"}) and len(index) == 530
    (row,) = index.search(vectors[:1], SearchParams(3, filter={"market": "fr-FR"}))
    assert [h.id for h in row] == [first]


def test_the_live_set_survives_a_restart_and_a_new_teacher(artifact, teacher, tmp_path, caplog):
    sha = read_manifest(artifact[0])["files"]["teacher/model.onnx"]["sha256"]
    texts = phrases(12, seed=4)

    async def write(live: LiveKeywords) -> list[dict]:
        live.start(asyncio.get_running_loop())
        out = []
        for i in range(0, 12, 3):
            ids = [f"kw:{j}" for j in range(i, i + 3)]
            out.append(await live.submit(ids, texts[i:i + 3], [{"n": j} for j in range(i, i + 3)],
                                         ["hd:100001"] if i == 0 else ["kw:0"] if i == 9 else []))
        return out

    live = LiveKeywords(tmp_path, Metrics(), snapshot_every=3)  # a snapshot after change 3; change 4 only in the log
    live.attach(open_index(artifact), teacher, sha)
    answers = asyncio.run(write(live))
    assert [a["sequence"] for a in answers] == [1, 2, 3, 4] and answers[0]["deleted"] == 1 and answers[3]["deleted"] == 1
    live.close()
    assert latest_snapshot_name(tmp_path) == "snapshot-000000000003" and (tmp_path / "wal.log").stat().st_size > 8

    for teacher_sha in (sha, "another-teacher"):
        index = open_index(artifact)
        again = LiveKeywords(tmp_path, Metrics())
        with caplog.at_level("INFO"):
            again.attach(index, teacher, teacher_sha)
        assert index.get("hd:100001") is None and index.get("kw:0") is None
        assert index.get("kw:5") == (texts[5], {"n": 5}) and len(index) == 500 - 1 + 11
        rows = index.search(encode_texts(teacher, texts[1:]), SearchParams(1))
        assert [row[0].id for row in rows] == [f"kw:{j}" for j in range(1, 12)]
        again.close()
    assert "re-encoded by this artifact's teacher" in caplog.text


def latest_snapshot_name(path) -> str:
    return sorted(p.name for p in path.glob("snapshot-*"))[-1]


def test_a_swap_hands_the_live_set_over_and_writes_wait_for_the_verdict(artifact, teacher, tmp_path):
    sha = read_manifest(artifact[0])["files"]["teacher/model.onnx"]["sha256"]
    texts = phrases(6, seed=5)

    async def scenario() -> None:
        live = LiveKeywords(tmp_path, Metrics())
        old = open_index(artifact)
        live.attach(old, teacher, sha)
        live.start(asyncio.get_running_loop())
        await live.submit(["kw:0", "kw:1"], texts[:2], [{}, {}], ["hd:100001"])

        # Abandoned (a refused reload): the new index is dropped, writes go on to the old one.
        rejected = open_index(artifact)
        handover = await live.handover(rejected, teacher, sha)
        assert rejected.get("kw:0") == (texts[0], {}) and rejected.get("hd:100001") is None
        pending = live.submit(["kw:2"], texts[2:3], [{}], [])
        await asyncio.sleep(0.2)
        assert not pending.done()  # held until the swap is decided
        handover.abandon()
        await pending
        assert old.get("kw:2") is not None and rejected.get("kw:2") is None

        # Committed, to an artifact whose teacher is "another" one (same weights here): the live
        # set is re-encoded by it, later writes go to the new index only, and a snapshot holds it.
        new = open_index(artifact)
        handover = await live.handover(new, teacher, "another-teacher")
        handover.commit()
        await live.submit(["kw:3"], texts[3:4], [{"m": 1}], ["kw:1"])
        assert new.get("kw:3") == (texts[3], {"m": 1}) and new.get("kw:1") is None and new.get("kw:2") is not None
        assert old.get("kw:3") is None
        assert live.live.teacher == "another-teacher" and list(tmp_path.glob("snapshot-*"))
        (row,) = new.search(encode_texts(teacher, texts[2:3]), SearchParams(1))
        assert row[0].id == "kw:2"
        live.close()

    asyncio.run(scenario())


def test_searches_beside_a_writer_see_whole_changes_only(artifact, teacher):
    """Searches from two threads while changes of 8 keywords go in, each change one upsert
    "group": a search that sees any keyword of a group sees it with all of its group's (k = 40
    over a filter that only the groups match), in both write modes."""
    import threading

    texts = phrases(8, seed=9)
    vectors = encode_texts(teacher, texts)
    for double_buffer in (False, True):
        index = open_index(artifact, double_buffer)
        errors: list = []
        stop = threading.Event()

        def searching() -> None:
            try:
                while not stop.is_set():
                    (row,) = index.search(vectors[:1], SearchParams(40, filter={"kind": "group"}))
                    groups: dict = {}
                    for hit in row:
                        groups.setdefault(hit.id.split(":")[1], set()).add(hit.id)
                    for name, members in groups.items():
                        assert len(members) == 8 or len(row) == 40, (name, members)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=searching) for _ in range(2)]
        for t in threads:
            t.start()
        for g in range(12):
            index.apply([f"grp:{g - 2}:{j}" for j in range(8)] if g >= 2 else [],
                        [f"grp:{g}:{j}" for j in range(8)], vectors, texts, [{"kind": "group"}] * 8)
        stop.set()
        for t in threads:
            t.join()
        assert not errors, errors[0]
        assert len(index) == 500 + 16

"""The Milvus backend against a real milvus-lite: embedded here, as a local server in the slow tests.

What must hold: its top-10 agrees with exact search, filters are exact and cannot be escaped
from, upserts and deletes are visible at once, a collection from another artifact is refused,
and a Milvus that is down yields the dedicated exceptions, never a generic crash.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

# the Milvus backend and its real engine are the 'scale' extra (part of dev)
pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from artifact.manifest import read_manifest, write_manifest
from retrieval.base import IndexUnavailable, SearchParams, VectorIndex
from retrieval.exact import exact_top_k, recall_at_k
from retrieval.milvus import (
    STATE_PROPERTY,
    MilvusIndex,
    MilvusUnreachable,
    PushRefused,
    filter_expression,
    push_artifact,
    quote,
)

from .conftest import LiteServer, free_port

QUERIES = [
    "cordless drill", "kitchen faucet", "led light bulbs", "deck stain", "garage door opener",
    "ceiling fan with light", "bathroom vanity", "wood screws", "paint roller", "lawn mower",
    "water heater", "shower head", "door knob", "patio furniture", "tile cutter",
    "microwave stainless", "fence panel", "weather stripping", "chain saw", "air filter",
    "how to fix a leaky faucet", "best washing machine", "garden hose", "concrete mix",
    "toilet seat", "window blinds", "smoke detector", "extension cord", "pressure washer",
    "history of rome", "cheap flights", "weather tomorrow", "python tutorial", "flu symptoms",
    "used cars", "recipes with chicken", "mortgage rates", "football scores", "hotels near me",
    "insulation r30",
]


@pytest.fixture(scope="module")
def query_vectors(artifact, manifest):
    """The artifact's own student encodes real query texts: what the service sends the index."""
    from retrieval.onnx_encoder import OnnxEncoder

    spec = manifest["encoders"]["student"]
    encoder = OnnxEncoder(artifact / spec["onnx"], artifact / spec["tokenizer"], int(spec.get("max_length") or 128))
    return encoder.encode(QUERIES).vectors


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, artifact):
    uri = str(tmp_path_factory.mktemp("milvus-embedded") / "keywords.db")
    message = push_artifact(artifact, uri, "kw")
    assert message.startswith("pushed 500 keywords")
    return uri


@pytest.fixture()
def index(embedded, manifest):
    idx = MilvusIndex(embedded, "kw", dim=768, artifact_sha256=manifest["artifact_sha256"],
                      ef=int(manifest["index"]["ef"]))
    yield idx
    idx.close()


def ids_of(rows):
    return [[hit.id for hit in row] for row in rows]


def exact_ids(keywords, queries, k, keep=None):
    ids, _, vectors = keywords
    rows = list(range(len(ids))) if keep is None else [i for i, kid in enumerate(ids) if keep(kid)]
    labels = exact_top_k(vectors[rows], queries, k)
    return [[ids[rows[label]] for label in row] for row in labels.tolist()]


def test_it_is_a_vector_index(index):
    assert isinstance(index, VectorIndex)
    assert index.backend == "milvus" and index.dim == 768 and len(index) == 500
    index.verify()
    assert index.healthy()


def test_top_10_agrees_with_exact_search(index, keywords, query_vectors):
    found = index.search(query_vectors, SearchParams(k=10))
    assert all(len(row) == 10 for row in found)
    assert recall_at_k(ids_of(found), exact_ids(keywords, query_vectors, 10)) >= 0.95
    # scores are inner products of unit vectors, best first: the cosine, as hnswlib's
    ids, _, vectors = keywords
    position = {kid: i for i, kid in enumerate(ids)}
    for q, row in zip(query_vectors, found):
        scores = [hit.score for hit in row]
        assert scores == sorted(scores, reverse=True)
        assert np.allclose(scores, [float(vectors[position[h.id]] @ q) for h in row], atol=1e-4)


def test_push_is_idempotent(embedded, artifact):
    assert "nothing to do" in push_artifact(artifact, embedded, "kw")


@pytest.mark.parametrize("flt, keep", [
    ({"source": "mq"}, lambda kid: kid.startswith("mq:")),
    ({"source": ["hd"]}, lambda kid: kid.startswith("hd:")),
    ({"source": ["hd", "mq"]}, lambda kid: True),
])
def test_filter_is_exact(index, keywords, query_vectors, flt, keep):
    found = index.search(query_vectors, SearchParams(k=10, filter=flt))
    assert all(keep(kid) for row in ids_of(found) for kid in row)
    assert recall_at_k(ids_of(found), exact_ids(keywords, query_vectors, 10, keep)) >= 0.95


@pytest.mark.parametrize("flt", [
    {"source": "nope"}, {"source": []}, {"source": 7}, {"colour": "red"}, {"source": "mq", "colour": "red"},
])
def test_filter_that_matches_nothing_finds_nothing(index, query_vectors, flt):
    assert index.search(query_vectors[:3], SearchParams(k=10, filter=flt)) == [[], [], []]


@pytest.mark.parametrize("flt", [
    {"source": {"$ne": "hd"}}, {"price": float("nan")}, {"n": 2**70}, {"": "x"}, {7: "x"}, ["source"],
])
def test_filter_values_outside_the_semantics_are_refused(index, query_vectors, flt):
    with pytest.raises(ValueError):
        index.search(query_vectors[:1], SearchParams(k=5, filter=flt))


def test_quoting_leaves_no_way_out_of_the_literal():
    assert quote('a"b') == '"a\\"b"'
    assert quote("a\\") == '"a\\\\"'
    assert quote("x\ny") == '"x\\ny"'
    assert filter_expression({"source": ["hd", "mq"], "n": 1.0}) == (
        'array_contains_any(attribute_keys, ["[\\"source\\",\\"s\\",\\"hd\\"]", "[\\"source\\",\\"s\\",\\"mq\\"]"])'
        ' and array_contains_any(attribute_keys, ["[\\"n\\",\\"n\\",1]"])')


def test_upsert_and_delete_are_visible_with_attributes(index, query_vectors):
    hostile = 'Ac"me\\ " or source == "hd'  # a value that would end an unescaped literal
    q = query_vectors[0]
    extra = [("live:1", "live keyword one", {"source": "live", "brand": hostile, "price": 9.5, "stock": 3, "promo": True}),
             ("live:2", "live keyword two", {"source": "live", "brand": "Other", "price": 0.00001, "stock": 0, "promo": False})]
    try:
        index.upsert([e[0] for e in extra], np.stack([q, q]), [e[1] for e in extra], [e[2] for e in extra])
        assert len(index) == 502
        assert index.get("live:1") == ("live keyword one", extra[0][2]) and index.get("absent:1") is None
        top = index.search(q[None], SearchParams(k=2))[0]
        assert {hit.id for hit in top} == {"live:1", "live:2"}
        one = lambda flt: ids_of(index.search(q[None], SearchParams(k=10, filter=flt)))[0]  # noqa: E731
        assert one({"brand": hostile}) == ["live:1"]
        assert one({"brand": 'Ac"me'}) == []
        assert one({"stock": 3}) == ["live:1"] and one({"stock": [0, 3]}) != []
        assert one({"promo": False}) == ["live:2"]
        # equality as in the hnswlib backend: a boolean is not a number, 3 and 3.0 are one number
        assert one({"promo": 1}) == [] and one({"stock": 0}) == ["live:2"] and one({"stock": False}) == []
        assert one({"stock": 3.0}) == ["live:1"] and one({"stock": "3"}) == []
        assert one({"price": 0.00001}) == ["live:2"]
        assert one({"source": "live", "price": [9.5, 1.0]}) == ["live:1"]
        # an upsert of an existing id replaces it
        index.upsert(["live:1"], q[None], ["renamed"], [{"source": "live"}])
        assert [h.text for h in index.search(q[None], SearchParams(k=10, filter={"source": "live"}))[0]].count("renamed") == 1
        assert len(index) == 502
    finally:
        assert index.delete(["live:1", "live:2", "never-there"]) == 2
    assert len(index) == 500
    assert index.delete(["live:1"]) == 0
    assert not {"live:1", "live:2"} & set(ids_of(index.search(q[None], SearchParams(k=10)))[0])


def test_the_longest_values_the_service_admits_round_trip(index, query_vectors):
    """256-character values (the service's bound) of the costliest characters: quotes, backslashes,
    control characters and 4-byte UTF-8, under a 64-character name."""
    name = "n" * 64
    values = ['"\\' * 128, "\x01" * 256, "\U0001F600" * 256]
    ids = [f"long:{i}" for i in range(len(values))]
    q = query_vectors[1]
    try:
        index.upsert(ids, np.stack([q] * len(values)), ["long"] * len(values), [{name: v} for v in values])
        for kid, value in zip(ids, values):
            assert ids_of(index.search(q[None], SearchParams(k=10, filter={name: value})))[0] == [kid]
        assert sorted(ids_of(index.search(q[None], SearchParams(k=10, filter={name: values})))[0]) == ids
    finally:
        index.delete(ids)


def test_upsert_refuses_bad_rows(index, query_vectors):
    with pytest.raises(ValueError):
        index.upsert(["x:1"], query_vectors[:1], ["t"], [{"tags": ["a", "b"]}])  # not a scalar
    with pytest.raises(ValueError):
        index.upsert(["x:1", "x:2"], query_vectors[:1], ["t"], [{}])  # lengths differ
    with pytest.raises(ValueError):
        index.upsert(["x:1"], np.zeros((1, 5), np.float32), ["t"], [{}])  # wrong dim
    assert len(index) == 500


@pytest.fixture(scope="module")
def other_artifact(tmp_path_factory, artifact):
    """The same files but another eval.json: another artifact sha256, cheaply (hard links where
    the file system allows; the manifest refuses symlinks that lead outside the folder)."""
    root = tmp_path_factory.mktemp("other") / "artifact"
    for path in artifact.rglob("*"):
        target = root / path.relative_to(artifact)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.name not in ("manifest.json", "eval.json"):
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except OSError:  # another file system
                shutil.copy2(path, target)
    (root / "eval.json").write_text(json.dumps({"note": "another artifact"}))
    manifest = read_manifest(artifact)
    write_manifest(root, {k: v for k, v in manifest.items() if k not in ("files", "artifact_sha256")})
    return root


def test_a_collection_from_another_artifact_is_refused(tmp_path, artifact, manifest, other_artifact):
    uri = str(tmp_path / "two.db")
    push_artifact(artifact, uri, "kw")
    other_sha = read_manifest(other_artifact)["artifact_sha256"]
    assert other_sha != manifest["artifact_sha256"]
    with pytest.raises(PushRefused, match="--replace"):
        push_artifact(other_artifact, uri, "kw")
    # the service side: the loaded artifact is not the one the collection was pushed from
    stale = MilvusIndex(uri, "kw", dim=768, artifact_sha256=other_sha)
    with pytest.raises(ValueError, match="pushed from artifact"):
        stale.verify()
    assert push_artifact(other_artifact, uri, "kw", replace=True).startswith("pushed 500")
    stale.verify()
    with pytest.raises(ValueError, match="pushed from artifact"):
        MilvusIndex(uri, "kw", dim=768, artifact_sha256=manifest["artifact_sha256"]).verify()
    with pytest.raises(ValueError, match="768-d"):
        MilvusIndex(uri, "kw", dim=384, artifact_sha256=other_sha).verify()


def test_an_incomplete_push_is_refused_and_redone(tmp_path, artifact, manifest):
    uri = str(tmp_path / "partial.db")
    push_artifact(artifact, uri, "kw")
    idx = MilvusIndex(uri, "kw", dim=768, artifact_sha256=manifest["artifact_sha256"])
    idx.client.alter_collection_properties("kw", properties={STATE_PROPERTY: "loading"})  # as a killed push leaves it
    with pytest.raises(ValueError, match="incomplete"):
        idx.verify()
    assert push_artifact(artifact, uri, "kw").startswith("pushed 500")
    idx.verify()


def test_a_missing_collection_says_how_to_push(tmp_path, embedded):
    with pytest.raises(ValueError, match="hlm index push"):
        MilvusIndex(embedded, "absent", dim=768, artifact_sha256=None)


def test_unreachable_at_start_is_one_sentence():
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(MilvusUnreachable) as caught:
        MilvusIndex(uri, "kw", dim=768, artifact_sha256=None, timeout_s=2)
    message = str(caught.value)
    assert uri in message and "\n" not in message and message.endswith(".")


# ---- the same code over the network: `milvus-lite server` on loopback ----

@pytest.mark.slow
def test_server_search_and_kill_gives_index_unavailable_then_recovers(tmp_path, artifact, manifest, keywords,
                                                                      query_vectors):
    server = LiteServer(tmp_path / "data", free_port()).start()
    try:
        assert push_artifact(artifact, server.uri, "kw").startswith("pushed 500")
        idx = MilvusIndex(server.uri, "kw", dim=768, artifact_sha256=manifest["artifact_sha256"], ef=64, timeout_s=2)
        idx.verify()
        found = idx.search(query_vectors, SearchParams(k=10))
        assert recall_at_k(ids_of(found), exact_ids(keywords, query_vectors, 10)) >= 0.95

        server.kill()  # mid-run: a crash, no goodbye
        for _ in range(3):
            with pytest.raises(IndexUnavailable) as caught:
                idx.search(query_vectors[:2], SearchParams(k=10))
            assert server.uri in str(caught.value) and "\n" not in str(caught.value)
        with pytest.raises(IndexUnavailable):
            idx.upsert(["x:1"], query_vectors[:1], ["t"], [{}])
        with pytest.raises(IndexUnavailable):
            len(idx)
        assert not idx.healthy()

        server.start()  # same data, same port: the client recovers without being rebuilt
        deadline = time.monotonic() + 60  # bounded: gRPC reconnects within its 2 s backoff
        while not idx.healthy() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert idx.healthy()
        # the restarted server rebuilds its graph: the same answers up to ANN noise
        assert recall_at_k(ids_of(idx.search(query_vectors, SearchParams(k=10))), ids_of(found)) >= 0.95
        assert len(idx) == 500
    finally:
        server.kill()
        shutil.rmtree(tmp_path / "data", ignore_errors=True)


@pytest.mark.slow
def test_hlm_index_push_over_the_uri(lite_server, artifact):
    from typer.testing import CliRunner

    from hlm.cli import app

    runner = CliRunner()
    first = runner.invoke(app, ["index", "push", str(artifact), "--uri", lite_server.uri, "--collection", "cli"])
    assert first.exit_code == 0, first.output
    assert "pushed 500 keywords" in first.output
    again = runner.invoke(app, ["index", "push", str(artifact), "--uri", lite_server.uri, "--collection", "cli"])
    assert again.exit_code == 0 and "nothing to do" in again.output
    down = runner.invoke(app, ["index", "push", str(artifact), "--uri", f"http://127.0.0.1:{free_port()}"])
    assert down.exit_code == 2 and "cannot be reached" in down.output and "Traceback" not in down.output


# ---- what the API admits, Milvus holds (#28 finding 3) ----

# The edges of what service/protocol.py admits: numbers, integer or not, from -2^63 to the
# largest double below 2^63 (as an integer and as a double), a subnormal, minus zero.
TOP = int(math.nextafter(2.0**63, 0.0))
ADMITTED = [-2**63, float(-2**63), TOP, float(TOP), 1e-320, -0.0, 0.5, 2**53 + 1]
REFUSED = [2**63, -2**63 - 1, 1e19, -1e19, 2.0**63, 1.7976931348623157e308]
# Milvus would hold these, but read as doubles (JavaScript, a schema tool) they are 2^63: refused
# too, so the range is one whatever a client parses numbers as.
REFUSED_BY_THE_API_ONLY = [2**63 - 1, TOP + 1]


def _search_body(value) -> str:
    return json.dumps({"query": "drill", "filter": {"p": value}})


def _keywords_body(value) -> str:
    return json.dumps({"upsert": [{"id": "kw:1", "text": "drill", "attributes": {"p": value}}]})


@pytest.mark.parametrize("value", REFUSED + REFUSED_BY_THE_API_ONLY, ids=str)
def test_a_number_milvus_cannot_key_is_a_422_at_validation(value):
    """Admitted, 1e19 failed inside the search batch (a 500 for every batch-mate) or after an
    upsert's fsync; now the request alone is refused with a sentence, before either."""
    from pydantic import ValidationError

    from service.protocol import KeywordsRequest, SearchRequest

    if value not in REFUSED_BY_THE_API_ONLY:
        with pytest.raises(ValueError):
            filter_expression({"p": value})  # what Milvus' side refuses ...
    for model, body in ((SearchRequest, _search_body(value)), (KeywordsRequest, _keywords_body(value))):
        with pytest.raises(ValidationError, match=r"2\^63"):  # ... the API refuses first
            model.model_validate_json(body)


def test_every_number_the_api_admits_milvus_holds_and_finds(index, query_vectors):
    from service.protocol import KeywordsRequest, SearchRequest

    ids = [f"num:{i}" for i in range(len(ADMITTED))]
    attrs = []
    for i, value in enumerate(ADMITTED):
        SearchRequest.model_validate_json(_search_body(value))
        attrs.append(KeywordsRequest.model_validate_json(_keywords_body(value)).upsert[0].attributes | {"i": i})
    q = query_vectors[2]
    try:
        index.upsert(ids, np.stack([q] * len(ids)), ["number"] * len(ids), attrs)
        for i, value in enumerate(ADMITTED):
            found = ids_of(index.search(q[None], SearchParams(k=20, filter={"p": value, "i": i})))[0]
            assert found == [ids[i]], value
            assert index.get(ids[i])[1]["i"] == i
    finally:
        index.delete(ids)


# ---- a released collection is loaded again within the call timeout (#28 finding 12) ----

class _ReleasedOnce:
    """A MilvusClient stand-in whose collection is found released once (a restarted server)."""

    def __init__(self):
        self.load_timeouts: list[float] = []
        self.released = True

    def has_collection(self, name, timeout=None):
        return True

    def get_load_state(self, name, timeout=None):
        from pymilvus.client.types import LoadState

        return {"state": LoadState.Loaded}

    def list_indexes(self, name, field_name="", timeout=None):
        return ["vector"]

    def describe_index(self, name, index_name, timeout=None):
        return {"index_type": "HNSW"}

    def describe_collection(self, name, timeout=None):
        return {"properties": {}}

    def load_collection(self, name, timeout=None):
        self.load_timeouts.append(timeout)

    def search(self, *args, **kwargs):
        from pymilvus.exceptions import MilvusException

        if self.released:
            self.released = False
            raise MilvusException(code=101, message="collection not loaded")
        return [[]]

    def close(self):
        pass


def test_a_released_collection_is_loaded_again_within_the_call_timeout_not_30_s():
    """The reload runs in the encoder's batch thread: it waited max(timeout, 30 s) there."""
    client = _ReleasedOnce()
    idx = MilvusIndex("http://milvus:19530", "kw", dim=4, artifact_sha256=None, timeout_s=0.5, client=client)
    assert client.load_timeouts == []  # found loaded at start-up (a slow load: test_milvus_load.py)
    assert idx.search(np.ones((1, 4), np.float32) / 2, SearchParams(k=3)) == [[]]
    assert client.load_timeouts == [0.5]

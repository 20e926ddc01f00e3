"""The real app on loopback through HTTP: the shared server on the product's student (the
tiny static build, ``static_server``), and the MiniLM int8 artifact's (``server``) where a
test is about a dynamically quantised student."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest

from artifact.manifest import encoder_model
from retrieval.onnx_encoder import OnnxEncoder
from retrieval.base import SearchParams
from retrieval.hnsw import HnswIndex
from service.metrics import LATENCY_BUCKETS
from http_helpers import error_of, metrics, value

pytestmark = pytest.mark.timeout(300)

QUERIES = [
    "cordless drill",
    "garden hose 50 ft",
    "how to fix a leaky faucet in the bathroom sink",
    "led light bulbs",
    "wood screws",
    "paint",
]


@pytest.fixture(scope="module")
def direct(static_server):
    """The artifact's encoders (the student at its served precision) and index used directly,
    the reference for the server."""
    root = static_server.artifact
    manifest = json.loads((root / "manifest.json").read_text())
    enc = manifest["encoders"]
    encoders = {
        "student": OnnxEncoder(root / encoder_model(enc["student"], enc["student"]["default_precision"]),
                               root / enc["student"]["tokenizer"]),
        "teacher": OnnxEncoder(root / enc["teacher"]["onnx"], root / enc["teacher"]["tokenizer"]),
    }
    index = HnswIndex(root / "index/keywords.hnsw", root / "index/keywords.tsv", manifest["index"]["dim"],
                         manifest["index"]["ef"])
    return encoders, index


def served(server) -> dict:
    """The manifest of the artifact ``server`` serves."""
    return json.loads((server.artifact / "manifest.json").read_text())


def search(srv, **body) -> dict:
    response = srv.client.post("/v1/search", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def keywords(result: dict) -> tuple[list[str], np.ndarray]:
    return [h["id"] for h in result["keywords"]], np.array([h["score"] for h in result["keywords"]])


@pytest.mark.parametrize("encoder", ["student", "teacher"])
def test_results_equal_the_encoder_and_index_called_directly(static_server, direct, encoder):
    encoders, index = direct
    body = search(static_server, queries=QUERIES[:3], k=7, encoder=encoder)
    assert body["encoder"] == encoder and body["k"] == 7
    assert body["precision"] == ("fp32" if encoder == "teacher" else served(static_server)["encoders"]["student"]["default_precision"])
    assert body["precision"] == "fp32"  # the static student has no int8 copy
    assert len(body["results"]) == 3  # one result per query, in order (zip below stops at the shorter)
    for query, result in zip(QUERIES, body["results"]):
        hits = index.search(encoders[encoder].encode([query]).vectors, SearchParams(k=7))[0]
        ids, scores = keywords(result)
        assert result["query"] == query and result["truncated"] is False
        assert ids == [h.id for h in hits]
        assert [h["text"] for h in result["keywords"]] == [h.text for h in hits]
        np.testing.assert_allclose(scores, [h.score for h in hits], atol=1e-5)
        assert list(scores) == sorted(scores, reverse=True)
    assert set(body["timings"]) == {"queue_ms", "encode_ms", "index_ms", "total_ms"}
    assert all(v >= 0 for v in body["timings"].values())


def test_ef_and_k_reach_the_index(static_server, direct):
    encoders, index = direct
    body = search(static_server, query="copper pipe", k=30, ef=200)
    assert body["ef"] == 200 and len(body["results"][0]["keywords"]) == 30
    hits = index.search(encoders["student"].encode(["copper pipe"]).vectors, SearchParams(k=30, ef=200))[0]
    assert keywords(body["results"][0])[0] == [h.id for h in hits]
    assert search(static_server, query="copper pipe", k=80, ef=10)["ef"] == 80  # raised to k


def test_the_length_prior_reranks_the_ef_candidates_by_cosine_plus_weight_ln_words(static_server, direct):
    # The expected answer is made here from the index called directly: its top ef (the
    # candidates) by cosine + 0.05 * ln(words), the best 10, each score that sum.
    encoders, index = direct
    weight, ef = 0.05, 64
    moved = 0
    for query in QUERIES:
        body = search(static_server, query=query, k=10, ef=ef, length_prior=weight)
        assert body["length_prior"] == weight and body["ef"] == ef
        candidates = index.search(encoders["student"].encode([query]).vectors, SearchParams(k=ef, ef=ef))[0]
        expected = sorted(((h.score + weight * np.log(max(1, len(h.text.split()))), h.id) for h in candidates),
                          key=lambda pair: -pair[0])[:10]
        ids, scores = keywords(body["results"][0])
        assert ids == [kid for _, kid in expected]
        np.testing.assert_allclose(scores, [score for score, _ in expected], atol=1e-5)
        plain = keywords(search(static_server, query=query, k=10, ef=ef)["results"][0])[0]
        moved += ids != plain
    assert moved, "a prior of 0.05 changed no answer"
    # off by default, and an out-of-range weight is the client's error
    assert "length_prior" not in search(static_server, query="paint")
    for bad in (-0.01, 0.5, "0.02", True):
        r = static_server.client.post("/v1/search", json={"query": "paint", "length_prior": bad})
        assert r.status_code == 422 and "length_prior" in r.text, r.text


def embed(client, queries, encoder):
    response = client.post("/v1/embed", json={"queries": queries, "encoder": encoder})
    assert response.status_code == 200, response.text
    return np.array([r["embedding"] for r in response.json()["results"]])


@pytest.mark.parametrize("encoder", ["student", "teacher"])
def test_batch_equals_singles(static_server, encoder):
    singles = np.vstack([embed(static_server.client, [q], encoder) for q in QUERIES])
    batch = embed(static_server.client, QUERIES, encoder)
    assert batch.shape == (len(QUERIES), 768)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-4)
    assert (batch * singles).sum(1).min() > 1 - 1e-5

    single_hits = [search(static_server, query=q, k=10, encoder=encoder)["results"][0] for q in QUERIES]
    batch_hits = search(static_server, queries=QUERIES, k=10, encoder=encoder)["results"]
    assert len(batch_hits) == len(single_hits) == len(QUERIES)
    for one, many in zip(single_hits, batch_hits):
        assert keywords(one)[0] == keywords(many)[0]
        np.testing.assert_allclose(keywords(one)[1], keywords(many)[1], atol=1e-5)


@pytest.mark.parametrize("encoder", ["student", "teacher"])
def test_concurrent_requests_are_batched_and_equal_singles(static_server, encoder):
    queries = QUERIES * 2
    singles = [embed(static_server.client, [q], encoder)[0] for q in queries]
    before = metrics(static_server)

    async def fire():
        async with httpx.AsyncClient(base_url=static_server.url, timeout=60) as client:
            rs = await asyncio.gather(*[client.post("/v1/embed", json={"query": q, "encoder": encoder}) for q in queries])
        return [np.array(r.json()["results"][0]["embedding"]) for r in rs]

    together = asyncio.run(fire())
    assert min(float(a @ b) for a, b in zip(singles, together)) > 1 - 1e-5
    after = metrics(static_server)
    batches = value(after, "hlm_batch_size_count", encoder=encoder) - value(before, "hlm_batch_size_count", encoder=encoder)
    queued = value(after, "hlm_batch_size_sum", encoder=encoder) - value(before, "hlm_batch_size_sum", encoder=encoder)
    assert queued == len(queries)
    if encoder == "teacher":  # ~40 ms a query: the others queue up behind the first
        assert batches < len(queries)


def test_the_int8_student_answers_concurrent_requests_as_singles(server):
    """Dynamic int8 scales activations over the whole batch, so the MiniLM artifact's int8
    student runs one query at a time inside a batch: concurrent requests equal singles."""
    assert served(server)["encoders"]["student"]["batch_invariant"]["int8"] is False
    queries = QUERIES * 2
    singles = [embed(server.client, [q], "student")[0] for q in queries]
    before = metrics(server)

    async def fire():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            rs = await asyncio.gather(*[client.post("/v1/embed", json={"query": q}) for q in queries])
        return [np.array(r.json()["results"][0]["embedding"]) for r in rs]

    together = asyncio.run(fire())
    assert min(float(a @ b) for a, b in zip(singles, together)) > 1 - 1e-5
    after = metrics(server)
    assert value(after, "hlm_batch_size_sum", encoder="student") - value(
        before, "hlm_batch_size_sum", encoder="student") == len(queries)


BAD = [
    (b"", 422, "invalid_request"),
    (b"{not json", 422, "invalid_request"),
    (b'{"query": "\xff\xfe drill"}', 422, "invalid_request"),
    (b'{"query": ""}', 422, "invalid_request"),
    (b'{"query": "   \\n\\t "}', 422, "invalid_request"),
    (b'{"query": 42}', 422, "invalid_request"),
    (b'{"queries": "drill"}', 422, "invalid_request"),
    (b'{"queries": [1, 2]}', 422, "invalid_request"),
    (b'{"query": "drill", "k": 0}', 422, "invalid_request"),
    (b'{"query": "drill", "k": 101}', 422, "invalid_request"),
    (b'{"query": "drill", "k": "ten"}', 422, "invalid_request"),
    (b'{"query": "drill", "ef": 0}', 422, "invalid_request"),
    (b'{"query": "drill", "ef": 100000}', 422, "invalid_request"),
    (b'{"query": "drill", "encoder": "gpt"}', 422, "invalid_request"),
    (b'{"queries": [' + b",".join([b'"q"'] * 65) + b"]}", 422, "invalid_request"),
    (b'{"query": "' + b"x " * 10_001 + b'"}', 422, "invalid_request"),
    (b'{"query": "' + b"x" * 300_000 + b'"}', 413, "body_too_large"),
    (b"[" * 50_000, 422, "invalid_request"),
    (b"null", 422, "invalid_request"),
]


@pytest.mark.parametrize("body, status, code", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_input_gets_a_json_4xx_and_the_service_keeps_serving(static_server, body, status, code):
    response = static_server.client.post("/v1/search", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert error_of(response)["code"] == code
    assert search(static_server, query="drill", k=1)["results"][0]["keywords"]


def test_oversized_body_without_content_length_is_cut_off(static_server):
    def chunks():
        yield b'{"query": "'
        for _ in range(40):
            yield b"y" * 10_000
        yield b'"}'

    response = static_server.client.post("/v1/search", content=chunks(),  # chunked: no Content-Length
                                  headers={"content-type": "application/json"})
    assert response.status_code == 413 and error_of(response)["code"] == "body_too_large"


def test_other_edges_answer_json(static_server):
    r = static_server.client.get("/v1/nothing-here")
    assert r.status_code == 404 and error_of(r)["code"] == "not_found"
    r = static_server.client.get("/v1/search")
    assert r.status_code == 405 and error_of(r)["code"] == "method_not_allowed"
    r = static_server.client.post("/v1/embed", json={"query": "a", "k": 3})
    assert r.status_code == 422 and error_of(r)["code"] == "invalid_request"


def test_long_query_is_truncated_and_says_so(static_server):
    long = " ".join(["cordless drill with two batteries and a charger"] * 30)  # > 128 tokens
    body = search(static_server, queries=[long, "drill"], k=3)
    assert [r["truncated"] for r in body["results"]] == [True, False]


def test_control_characters_are_replaced_and_answered(static_server):
    raw = json.dumps({"query": "\u0000cordless\u0007 drill\u001b\ud800", "k": 3})  # \\u escapes
    response = static_server.client.post("/v1/search", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    body = response.json()
    plain = search(static_server, query="cordless drill", k=3)
    # Control characters become spaces and whitespace runs one space (artifact/text.py).
    assert body["results"][0]["query"] == "cordless drill"
    assert keywords(body["results"][0])[0] == keywords(plain["results"][0])[0]


def test_metrics_count_what_was_sent(static_server):
    before = metrics(static_server)
    for q in QUERIES[:3]:
        search(static_server, query=q, k=2)
    search(static_server, queries=QUERIES[:2], k=2, encoder="teacher")
    for _ in range(2):
        assert static_server.client.post("/v1/search", json={"query": ""}).status_code == 422
    after = metrics(static_server)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    count = "hlm_request_duration_seconds_count"
    assert delta(count, route="/v1/search", encoder="student", status="200") == 3
    assert delta(count, route="/v1/search", encoder="teacher", status="200") == 1
    assert delta(count, route="/v1/search", encoder="none", status="422") == 2
    assert delta("hlm_queries_total", encoder="student") == 3
    assert delta("hlm_queries_total", encoder="teacher") == 2
    assert delta("hlm_encoder_duration_seconds_count", encoder="student", precision="fp32") == 3
    assert delta("hlm_encoder_duration_seconds_count", encoder="teacher", precision="fp32") == 1
    assert delta("hlm_index_duration_seconds_count", encoder="teacher") == 1
    # Each search waited once: in its encoder's queue, or, for a student answered on the event
    # loop (service/loopgate.py), in the loop, which is then its queue.
    assert delta("hlm_queue_wait_seconds_count", encoder="student") == 3
    assert delta("hlm_queue_wait_seconds_count", encoder="teacher") == 1
    assert value(after, "hlm_index_size") == served(static_server)["index"]["count"] == 2000
    assert value(after, "hlm_queue_depth", encoder="student") == 0
    assert ("hlm_rejected_total", frozenset({("encoder", "teacher"), ("reason", "queue_full")})) in after

    bounds = sorted(float(dict(labels)["le"]) for name, labels in after
                    if name == "hlm_request_duration_seconds_bucket"
                    and dict(labels) | {"le": ""} == {"route": "/v1/search", "encoder": "student", "status": "200", "le": ""})
    assert bounds == sorted(LATENCY_BUCKETS) + [float("inf")]
    assert list(LATENCY_BUCKETS) == [0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075,
                                     0.01, 0.0125, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0]
    info = [dict(labels) for name, labels in after if name == "hlm_build_info"]
    assert info and info[0]["student_precision"] == "fp32" and len(info[0]["artifact_sha256"]) == 64
    assert {"version", "student_model", "teacher_model"} <= set(info[0])
    names = {name for name, _ in after}
    assert {"hlm_batch_size_bucket", "hlm_shadow_overlap_count"} <= names


def test_info_health_and_docs(static_server):
    manifest = served(static_server)
    info = static_server.client.get("/v1/info").json()
    assert info["artifact"]["sha256"] == manifest["artifact_sha256"]
    assert info["encoders"]["student"]["precision"] == "fp32" and info["encoders"]["teacher"]["dim"] == 768
    assert info["encoders"]["student"]["model"].startswith("static trained by hlm distill")
    assert info["encoders"]["student"]["provider"] == "CPUExecutionProvider"
    assert info["index"]["count"] == 2000 and info["eval"] == manifest["eval"]
    assert static_server.client.get("/healthz").json()["status"] == "ok"
    assert static_server.client.get("/readyz").json() == {"ready": True, "status": "ready"}
    spec = static_server.client.get("/openapi.json").json()
    search_op = spec["paths"]["/v1/search"]["post"]
    assert search_op["requestBody"]["content"]["application/json"]["schema"]["examples"]
    assert {"413", "422", "429", "503"} <= set(search_op["responses"])
    assert "/v1/embed" in spec["paths"]
    docs = static_server.client.get("/docs")  # dropped: its scripts come from a CDN (blank offline)
    assert docs.status_code == 404 and "/openapi.json" in error_of(docs)["message"]

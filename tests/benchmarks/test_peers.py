"""The benchmark peers (benchmarks/peers): same JSON shape as ours, same answers for the same vectors.

The fast tests use a hand-made 8-d index and fixed query vectors; the slow ones build the
peers from the small real artifacts (sentence-transformers, from the dev extra) and check
that they serve exactly the artifact's student: MiniLM + projection (``small_artifact``)
and a cut of the teacher (``unservable_artifact``'s mpnet-l2 student; being below the gate
does not matter to a benchmark peer).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from loadtest.cpus import free_port
from benchmarks.peers.common import PeerIndex
from benchmarks.peers.infinity_front import create_front, infinity_command
from benchmarks.peers.st_app import create_app
from artifact.store import write_store
from retrieval.base import SearchParams
from retrieval.hnsw import HnswIndex

DIM = 8
N = 60


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory) -> tuple[Path, Path, np.ndarray]:
    import hnswlib

    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    folder = tmp_path_factory.mktemp("tiny_index")
    graph = hnswlib.Index(space="ip", dim=DIM)
    graph.init_index(max_elements=N, M=8, ef_construction=50, random_seed=1)
    graph.add_items(vectors, np.arange(N))
    graph.save_index(str(folder / "keywords.hnsw"))
    write_store(folder / "keywords.tsv", [f"kw:{i}" for i in range(N)], [f"keyword number {i}" for i in range(N)])
    return folder / "keywords.hnsw", folder / "keywords.tsv", vectors


QUERIES = {"cordless drill": 3, "garden hose": 17, "paint": 42}


def query_vector(vectors: np.ndarray, text: str) -> np.ndarray:
    """A query near keyword QUERIES[text], off it a little (so the ranking is not trivial)."""
    rng = np.random.default_rng(len(text))
    v = vectors[QUERIES[text]] + 0.3 * rng.standard_normal(DIM).astype(np.float32)
    return (v / np.linalg.norm(v)).astype(np.float32)


def assert_search_shape(body: dict, query: str, k: int) -> list[str]:
    assert isinstance(body["results"], list) and len(body["results"]) == 1
    result = body["results"][0]
    assert result["query"] == query
    keywords = result["keywords"]
    assert len(keywords) == k
    for kw in keywords:
        assert set(kw) >= {"id", "text", "score"}
        assert isinstance(kw["id"], str) and isinstance(kw["text"], str) and isinstance(kw["score"], float)
    scores = [kw["score"] for kw in keywords]
    assert scores == sorted(scores, reverse=True)
    return [kw["id"] for kw in keywords]


def test_st_peer_answers_our_shape_and_our_results_for_the_same_vectors(tiny_index):
    index_path, store_path, vectors = tiny_index

    def encode(texts):
        return np.vstack([query_vector(vectors, t) for t in texts])

    peer = TestClient(create_app(encode, PeerIndex(index_path, store_path, DIM, ef=64)))
    ours = HnswIndex(index_path, store_path, DIM, ef=64)
    assert peer.get("/readyz").status_code == 200
    for query in QUERIES:
        r = peer.post("/v1/search", json={"query": query, "k": 5, "encoder": "student"})
        assert r.status_code == 200, r.text
        ids = assert_search_shape(r.json(), query, 5)
        our_hits = ours.search(encode([query]), SearchParams(k=5))[0]
        assert ids == [h.id for h in our_hits]
        assert [kw["score"] for kw in r.json()["results"][0]["keywords"]] == pytest.approx([h.score for h in our_hits], abs=1e-6)
        # and against exact search: the nearest keyword is the one the query was made from
        exact = np.argsort(-(vectors @ encode([query])[0]))[:5]
        assert ids == [f"kw:{i}" for i in exact]


def test_st_peer_rejects_what_ours_rejects(tiny_index):
    index_path, store_path, vectors = tiny_index
    peer = TestClient(create_app(lambda t: np.zeros((len(t), DIM), np.float32), PeerIndex(index_path, store_path, DIM, 64)))
    assert peer.post("/v1/search", json={"query": "x", "encoder": "teacher"}).status_code == 422
    assert peer.post("/v1/search", json={"query": ""}).status_code == 422
    assert peer.post("/v1/search", json={"query": "x", "k": 0}).status_code == 422


class _ThreadServer:
    """uvicorn in a thread on loopback (a stand-in embedding server for the two-hop front)."""

    def __init__(self, app: FastAPI):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "stand-in embedding server did not start"
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def test_two_hop_front_answers_our_shape_and_our_results(tiny_index):
    index_path, store_path, vectors = tiny_index
    seen = []
    fake = FastAPI()  # stands in for infinity-emb (not installed): the test is of the front's two hops

    @fake.post("/embeddings")
    def embeddings(body: dict) -> dict:  # infinity-emb's OpenAI-style shape
        seen.append(body)
        return {"object": "list", "data": [{"object": "embedding", "index": i, "embedding": query_vector(vectors, t).tolist()}
                                           for i, t in enumerate(body["input"])]}

    ours = HnswIndex(index_path, store_path, DIM, ef=64)
    with _ThreadServer(fake) as url:
        with TestClient(create_front(url + "/embeddings", PeerIndex(index_path, store_path, DIM, 64))) as front:
            for query in QUERIES:
                r = front.post("/v1/search", json={"query": query, "k": 4, "encoder": "student"})
                assert r.status_code == 200, r.text
                ids = assert_search_shape(r.json(), query, 4)
                assert ids == [h.id for h in ours.search(query_vector(vectors, query)[None], SearchParams(k=4))[0]]
    assert seen[0] == {"model": "student", "input": ["cordless drill"]}


def test_infinity_command_is_offline_safe_and_local(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "infinity_emb").write_text("")
    cmd = infinity_command(tmp_path / "model", 1234, venv=venv)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert "--no-vector-disk-cache" in cmd and "--no-compile" in cmd
    assert cmd[cmd.index("--engine") + 1] == "torch" and cmd[cmd.index("--device") + 1] == "cpu"


# ---- with the real small artifact (slow: builds it unless HLM_TEST_ARTIFACT is set) ----


@pytest.mark.slow
def test_weights_read_from_the_onnx_student_reproduce_it(small_artifact, tmp_path):
    from benchmarks.encoder_bench import encoders_of
    from benchmarks.peers.st_student import build_st_student, save_st_student

    texts = ["cordless drill", "18 volt lithium ion battery pack", "how tall is the eiffel tower", "paint"]
    onnx_vectors = encoders_of(small_artifact, 1)["student_fp32"].encode_each(texts).vectors
    model = build_st_student(small_artifact)
    vectors = model.encode(texts, convert_to_numpy=True)
    assert vectors.shape == onnx_vectors.shape
    assert np.min(np.sum(vectors * onnx_vectors, axis=1)) > 0.9999

    from sentence_transformers import SentenceTransformer

    folder = save_st_student(small_artifact, tmp_path / "st")
    assert (folder / "3_Dense" / "config.json").is_file()
    reloaded = SentenceTransformer(str(folder), device="cpu").encode(texts, convert_to_numpy=True)
    assert np.min(np.sum(reloaded * onnx_vectors, axis=1)) > 0.9999


@pytest.mark.slow
def test_st_peer_top_results_equal_ours_on_the_real_artifact(small_artifact):
    from benchmarks.peers.st_app import st_encoder
    from service.main import create_app as create_ours
    from service.settings import Settings

    peer = TestClient(create_app(st_encoder(small_artifact), PeerIndex.from_artifact(small_artifact)))
    settings = Settings(artifact_dir=small_artifact, student_precision="fp32", shadow_rate=0, warmup_rounds=1)
    queries = ["cordless drill", "garden hose", "led light bulbs", "kitchen faucet", "history of rome"]
    with TestClient(create_ours(settings)) as ours:
        deadline = time.monotonic() + 120
        while ours.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "our service did not become ready"
            time.sleep(0.2)
        for query in queries:
            body = {"query": query, "k": 10, "encoder": "student"}
            mine = ours.post("/v1/search", json=body).json()
            theirs = peer.post("/v1/search", json=body).json()
            our_ids = [kw["id"] for kw in mine["results"][0]["keywords"]]
            their_ids = assert_search_shape(theirs, query, 10)
            # same model, same index: the same top keywords (float noise may swap near-ties)
            assert their_ids[:3] == our_ids[:3] or len(set(their_ids) & set(our_ids)) >= 9
            assert theirs["results"][0]["keywords"][0]["score"] == pytest.approx(mine["results"][0]["keywords"][0]["score"], abs=1e-4)


@pytest.mark.slow
def test_a_student_cut_from_the_teacher_is_reproduced_too(unservable_artifact):
    """The demo's kind of student: the teacher's first layers, no projection."""
    import json

    from benchmarks.encoder_bench import encoders_of
    from benchmarks.peers.st_student import build_st_student

    student = json.loads((unservable_artifact / "manifest.json").read_text())["encoders"]["student"]
    assert "mpnet" in student["base_model"] and student["model"].startswith("mpnet-l2")
    texts = ["cordless drill", "how tall is the eiffel tower"]
    onnx_vectors = encoders_of(unservable_artifact, 1)["student_fp32"].encode_each(texts).vectors
    vectors = build_st_student(unservable_artifact).encode(texts, convert_to_numpy=True)
    assert np.min(np.sum(vectors * onnx_vectors, axis=1)) > 0.9999

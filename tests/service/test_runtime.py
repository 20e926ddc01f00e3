"""Runtime pieces on the small artifact, in process: answers independent of the batch."""

from __future__ import annotations

import json
import logging
import threading
import time

import numpy as np
import pytest

from service.batcher import Job
from retrieval.onnx_encoder import OnnxEncoder
from retrieval.hnsw import HnswIndex
from service.metrics import Metrics
from artifact.manifest import ArtifactError
from service.loader import load_manifest
from service.runtime import Query, Runtime
from service.settings import Settings

TEXTS = ["cordless drill", "how to fix a leaky faucet in the bathroom sink", "paint", "garden hose 50 ft"]


@pytest.fixture(scope="module")
def runtime(small_artifact):
    settings = Settings(artifact_dir=small_artifact)
    rt = Runtime(settings, load_manifest(settings), Metrics())
    rt.load(encoders=("student",))
    return rt


def test_int8_rows_are_computed_as_if_alone(runtime):
    encoder: OnnxEncoder = runtime.slots["student"].encoder
    singles = np.vstack([encoder.encode([t]).vectors for t in TEXTS])
    each = encoder.encode_each(TEXTS)
    np.testing.assert_allclose(each.vectors, singles, atol=1e-6)
    assert each.truncated == [False] * len(TEXTS)


def jobs_of(*queries: Query) -> list[Job]:
    now = time.perf_counter()
    return [Job(q, len(q.texts), enqueued=now, started=now) for q in queries]


def test_a_batch_of_mixed_k_and_ef_answers_each_as_alone(runtime):
    slot = runtime.slots["student"]
    queries = [Query(["cordless drill"], k=3, ef=64), Query(["paint", "garden hose"], k=40, ef=16),
               Query(["led bulb"], k=10, ef=200), Query(["wood screws"], k=0, want_vectors=True),
               Query(["copper pipe"], k=64, ef=64), Query(["garden hose"], k=5, ef=64, filter={"source": "mq"}),
               Query(["paint"], k=5, ef=64, filter={"source": ["hd", "mq"]})]
    together = runtime.run_batch(slot, jobs_of(*queries))
    for query, answer in zip(queries, together):
        (alone,) = runtime.run_batch(slot, jobs_of(query))
        if query.k:
            assert [[h.id for h in row] for row in answer.hits] == [[h.id for h in row] for row in alone.hits]
            assert [len(row) for row in answer.hits] == [query.k] * len(query.texts)
            np.testing.assert_allclose([[h.score for h in row] for row in answer.hits],
                                       [[h.score for h in row] for row in alone.hits], atol=1e-6)
            if query.filter == {"source": "mq"}:
                assert all(h.id.startswith("mq:") for row in answer.hits for h in row)
        else:
            assert answer.hits is None and answer.vectors.shape == (1, 768)


def test_concurrent_searches_at_different_ef(small_artifact):
    manifest = json.loads((small_artifact / "manifest.json").read_text())
    index = HnswIndex(small_artifact / "index/keywords.hnsw", small_artifact / "index/keywords.tsv", 768, 64)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(32, 768)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    expected = {ef: index.search_labels(vectors, 10, ef)[0] for ef in (10, 64, 300)}
    errors = []

    def worker(ef):
        for _ in range(20):
            if not np.array_equal(index.search_labels(vectors, 10, ef)[0], expected[ef]):
                errors.append(ef)

    threads = [threading.Thread(target=worker, args=(ef,)) for ef in (10, 64, 300, 64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and manifest["index"]["count"] == len(index)


@pytest.mark.slow
def test_an_artifact_below_the_quality_gate_is_refused(unservable_artifact):
    """The real build's verdict (hlm build without --allow-below-gate), not a hand-edited manifest."""
    gate = json.loads((unservable_artifact / "manifest.json").read_text())["gate"]
    with pytest.raises(ArtifactError) as refused:
        load_manifest(Settings(artifact_dir=unservable_artifact))
    assert str(refused.value) == (f"The artifact in {unservable_artifact} is marked not servable in its manifest: "
                                  f"{gate['message']}.")
    assert "\n" not in str(refused.value)


def test_serving_an_overridden_gate_is_logged_as_a_warning(small_artifact, caplog):
    gate = json.loads((small_artifact / "manifest.json").read_text())["gate"]
    assert gate["overridden"]  # the suite's artifact is built with --allow-below-gate (tests/conftest.py)
    with caplog.at_level(logging.WARNING, logger="service.loader"):
        load_manifest(Settings(artifact_dir=small_artifact))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        f"serving below the quality gate (the builder overrode it): {gate['message']}"]

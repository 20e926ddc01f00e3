"""Runtime pieces on the small artifact, in process: answers independent of the batch."""

from __future__ import annotations

import json
import os
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
               Query(["copper pipe"], k=64, ef=64)]
    together = runtime.run_batch(slot, jobs_of(*queries))
    for query, answer in zip(queries, together):
        (alone,) = runtime.run_batch(slot, jobs_of(query))
        assert answer.labels == alone.labels
        if query.k:
            assert [len(row) for row in answer.labels] == [query.k] * len(query.texts)
            np.testing.assert_allclose(answer.scores, alone.scores, atol=1e-6)
        else:
            assert answer.labels is None and answer.vectors.shape == (1, 768)


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


def test_an_artifact_below_the_quality_gate_is_refused(small_artifact, tmp_path):
    copy = tmp_path / "copy"
    for path in small_artifact.rglob("*"):
        if path.is_file() and path.name != "manifest.json":
            target = copy / path.relative_to(small_artifact)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(path, target)
    manifest = json.loads((small_artifact / "manifest.json").read_text())
    manifest["servable"] = False
    manifest["gate"] = {"message": "the student fails the quality gate"}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="marked not servable in its manifest: the student fails the quality gate."):
        load_manifest(Settings(artifact_dir=copy, verify_checksums=False))

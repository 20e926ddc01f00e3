"""Start-up on a collection Milvus has yet to load (issue #24): a real `milvus-lite server`, a load
slow for real.

The full artifact's collection (113k keywords) did not serve: on a Milvus that had just started,
the first call is answered only once the server has opened the collection (1.5 s for 113k here),
and start-up bounded it by HLM_MILVUS_TIMEOUT_S (1 s by default), then bounded the load itself
by one 30 s call. Now start-up asks with its own bound, requests the load and polls its state,
logging it, for up to HLM_MILVUS_LOAD_TIMEOUT_S, and past that stops with one sentence.

A load is made slow for real here as milvus-lite makes it: a server stopped before it saved a
segment's index (or one whose segments were merged since) builds that index in the next load.
The collection is pushed by `hlm index push`'s own code with a costly graph (M 64,
efConstruction 2000 over 3,000 vectors: seconds to build), the server killed, the saved index
files removed, the server started again. The first call to a freshly started server is made
slower than the per-call bound by scaling the bound down (HLM_MILVUS_TIMEOUT_S 0.05 s) rather
than the collection up.
"""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

import retrieval.milvus as milvus  # noqa: E402
from retrieval.base import SearchParams  # noqa: E402
from retrieval.exact import exact_top_k, recall_at_k  # noqa: E402
from retrieval.milvus import MilvusIndex, MilvusNotLoaded, push_keywords  # noqa: E402

from .conftest import LiteServer, free_port  # noqa: E402

pytestmark = pytest.mark.slow
N, DIM, SHA = 3000, 768, "c" * 64
SLOW_INDEX = {"M": 64, "ef_construction": 2000}  # milvus-lite takes any efConstruction; a cluster caps it


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    rng = np.random.default_rng(24)
    v = rng.standard_normal((N, DIM), dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory, vectors):
    """A collection of N synthetic keywords pushed by `hlm index push`'s own code."""
    srv = LiteServer(tmp_path_factory.mktemp("milvus-load"), free_port()).start()
    ids = [f"syn:{i}" for i in range(N)]
    push_keywords(lambda: (ids, [f"keyword {i}" for i in range(N)], vectors, [{"source": "syn"}] * N),
                  srv.uri, "slow", sha=SHA, dim=DIM, batch=1000, timeout_s=600, **SLOW_INDEX)
    yield srv
    srv.kill()
    shutil.rmtree(srv.data_dir, ignore_errors=True)


def restart_with_indexes_to_build(server: LiteServer) -> None:
    """The server started again without its saved indexes: its next load builds them."""
    server.kill()
    removed = [path.unlink() for path in server.data_dir.rglob("*.idx")]
    assert removed  # the push saved one per segment
    server.start()


@pytest.fixture()
def fast_log(monkeypatch, caplog):
    """The load state asked for every 50 ms and logged every 0.2 s (1 s and 5 s in service)."""
    monkeypatch.setattr(milvus, "LOAD_POLL_S", 0.05)
    monkeypatch.setattr(milvus, "LOAD_LOG_EVERY_S", 0.2)
    caplog.set_level(logging.INFO, logger="retrieval.milvus")
    return caplog


def test_start_up_waits_for_a_slow_load_and_logs_its_progress(server, vectors, fast_log):
    restart_with_indexes_to_build(server)  # freshly started: its first answer waits for the collection to open
    index = MilvusIndex(server.uri, "slow", dim=DIM, artifact_sha256=SHA, timeout_s=0.05, load_timeout_s=600)
    try:
        lines = [r.getMessage() for r in fast_log.records if r.name == "retrieval.milvus"]
        assert any("loading collection 'slow'" in line and "HLM_MILVUS_LOAD_TIMEOUT_S" in line for line in lines)
        # seen while it loaded, not only before and after: the wait is what let start-up go on
        assert any("'slow'" in line and " Loading" in line and " after " in line for line in lines), lines
        assert any("'slow'" in line and "loaded in" in line for line in lines)
        index.timeout_s = 10.0  # serving: a bound this shared machine meets
        index.verify()
        assert len(index) == N
        queries = vectors[:50] + 0.05 * np.random.default_rng(1).standard_normal((50, DIM), dtype=np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        found = [[h.id for h in row] for row in index.search(queries, SearchParams(k=10, ef=128))]
        truth = [[f"syn:{i}" for i in row] for row in exact_top_k(vectors, queries, 10).tolist()]
        assert recall_at_k(found, truth) >= 0.9
    finally:
        index.close()


def test_a_load_longer_than_the_setting_stops_start_up_with_one_sentence(server, fast_log):
    restart_with_indexes_to_build(server)
    with pytest.raises(MilvusNotLoaded) as caught:
        MilvusIndex(server.uri, "slow", dim=DIM, artifact_sha256=SHA, timeout_s=1.0, load_timeout_s=0.5)
    message = str(caught.value)
    assert "HLM_MILVUS_LOAD_TIMEOUT_S" in message and "'slow'" in message and server.uri in message
    assert "Loading" in message  # the last state it saw
    assert "\n" not in message and message.endswith(".") and message.count(". ") == 0
    # Milvus goes on loading: a second start-up finds it loading or loaded and waits for it
    index = MilvusIndex(server.uri, "slow", dim=DIM, artifact_sha256=SHA, timeout_s=1.0, load_timeout_s=600)
    assert index.healthy()
    index.close()


def test_the_service_refuses_with_the_sentence(server, fast_log, small_artifact):
    """Through the runtime (what `hlm serve` runs): the sentence is the start-up's refusal."""
    from artifact.manifest import ArtifactError, read_manifest
    from service.runtime import open_index
    from service.settings import Settings

    restart_with_indexes_to_build(server)
    manifest = read_manifest(small_artifact)
    manifest = dict(manifest, artifact_sha256=SHA, index=dict(manifest["index"], dim=DIM))
    settings = Settings(artifact_dir=small_artifact, index_backend="milvus", milvus_uri=server.uri,
                        milvus_collection="slow", milvus_load_timeout_s=0.5)
    with pytest.raises(ArtifactError, match=r"within 0\.5 s \(HLM_MILVUS_LOAD_TIMEOUT_S") as caught:
        open_index(settings, manifest, small_artifact, 64)
    assert "\n" not in str(caught.value)
    served = open_index(settings.model_copy(update={"milvus_load_timeout_s": 600.0}), manifest, small_artifact, 64)
    assert served.ready and len(served) == N
    served.close()


def test_a_collection_dropped_while_waiting_is_said_at_once(server, small_artifact):
    from retrieval.milvus import connect, push_artifact

    push_artifact(small_artifact, server.uri, "gone")
    index = MilvusIndex(server.uri, "gone", dim=DIM, artifact_sha256=None, timeout_s=5.0)
    client = connect(server.uri, timeout_s=60)
    client.drop_collection("gone", timeout=60)  # a `hlm index push --replace` elsewhere
    client.close()
    with pytest.raises(MilvusNotLoaded, match="no longer has collection 'gone'.*hlm index push") as caught:
        index.wait_loaded(20)  # said at once, not after 20 s of waiting for a collection that is not there
    assert "\n" not in str(caught.value)
    index.close()

"""The service's runtime on the Milvus backend (HLM_INDEX_BACKEND=milvus), against `milvus-lite server`.

Start-up refuses with one sentence what it must not serve (Milvus unreachable, a collection
from another artifact); while serving, a Milvus that dies gives the service's 503 with
Retry-After (never a generic exception, which would be a 500), readiness follows the index,
and both come back by themselves when Milvus does.
"""

from __future__ import annotations

import asyncio
import shutil

import pytest

# the Milvus backend and its real engine are the 'scale' extra (part of dev)
pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from artifact.manifest import ArtifactError
from retrieval.base import SearchParams
from retrieval.exact import recall_at_k
from retrieval.milvus import push_artifact
from service.errors import NotReady
from service.metrics import Metrics
from service.runtime import Runtime
from service.settings import Settings

from .conftest import LiteServer, free_port


def runtime_for(artifact, manifest, **settings) -> Runtime:
    s = Settings(artifact_dir=artifact, index_backend="milvus", warmup_rounds=1, **settings)
    return Runtime(s, manifest, Metrics(), root=artifact)


def test_unreachable_milvus_stops_start_up_with_one_sentence(artifact, manifest):
    uri = f"http://127.0.0.1:{free_port()}"
    runtime = runtime_for(artifact, manifest, milvus_uri=uri)
    with pytest.raises(ArtifactError) as caught:
        runtime.load(encoders=("student",))
    assert uri in str(caught.value) and "\n" not in str(caught.value)


def test_a_collection_from_another_artifact_stops_start_up(tmp_path, artifact, manifest):
    uri = str(tmp_path / "kw.db")
    push_artifact(artifact, uri, "kw")
    other = dict(manifest, artifact_sha256="0" * 64)
    runtime = Runtime(Settings(artifact_dir=artifact, index_backend="milvus", milvus_uri=uri, milvus_collection="kw"),
                      other, Metrics(), root=artifact)
    with pytest.raises(ArtifactError, match="pushed from artifact"):
        runtime.load(encoders=("student",))


def test_a_collection_with_live_changes_since_its_push_still_loads(tmp_path, artifact, manifest, keywords):
    """Upserts and deletes made through the service are durable in Milvus: its size is not the manifest's."""
    from retrieval.milvus import MilvusIndex

    uri = str(tmp_path / "kw.db")
    push_artifact(artifact, uri, "kw")
    pushed = MilvusIndex(uri, "kw", dim=768, artifact_sha256=manifest["artifact_sha256"])
    pushed.upsert(["live:1"], keywords[2][:1], ["live one"], [{"source": "live"}])
    assert pushed.delete(keywords[0][1:3]) == 2
    runtime = runtime_for(artifact, manifest, milvus_uri=uri, milvus_collection="kw")
    runtime.load(encoders=("student",))
    assert len(runtime.index) == 499
    assert runtime.index.get("live:1") == ("live one", {"source": "live"})


@pytest.mark.slow
def test_serving_through_a_dying_milvus_gives_503_and_recovers(tmp_path, artifact, manifest):
    server = LiteServer(tmp_path / "data", free_port()).start()
    try:
        push_artifact(artifact, server.uri, "kw")
        runtime = runtime_for(artifact, manifest, milvus_uri=server.uri, milvus_collection="kw", milvus_ef=96,
                              retry_after_s=2)
        runtime.load(encoders=("student",))
        runtime.warm_up()
        assert runtime.index.backend == "milvus" and len(runtime.index) == 500
        assert runtime.default_ef == 96  # HLM_MILVUS_EF is the default a request without ef gets
        vectors = runtime.slots["student"].encoder.encode(["cordless drill", "kitchen faucet"]).vectors
        before = runtime.index.search(vectors, SearchParams(k=10))
        assert [len(row) for row in before] == [10, 10]

        async def scenario():
            runtime.start(asyncio.get_running_loop())
            try:
                assert runtime.index_ready
                server.kill()
                with pytest.raises(NotReady) as caught:
                    await asyncio.to_thread(runtime.index.search, vectors, SearchParams(k=10))
                assert caught.value.status == 503 and caught.value.headers["Retry-After"] == "2"
                assert caught.value.code == "index_unavailable" and "\n" not in caught.value.message
                assert not runtime.index_ready
                for call in (lambda: runtime.index.get("hd:100001"), lambda: runtime.index.delete(["hd:100001"]), lambda: len(runtime.index)):
                    with pytest.raises(NotReady):
                        await asyncio.to_thread(call)
                server.start()
                for _ in range(300):  # bounded: the probe runs every 2 s
                    if runtime.index_ready:
                        break
                    await asyncio.sleep(0.1)
                assert runtime.index_ready
                after = await asyncio.to_thread(runtime.index.search, vectors, SearchParams(k=10))
                # the restarted server rebuilds its graph: the same answers up to ANN noise
                assert recall_at_k([[h.id for h in r] for r in after], [[h.id for h in r] for r in before]) >= 0.9
            finally:
                await runtime.close()

        asyncio.run(scenario())
    finally:
        server.kill()
        shutil.rmtree(tmp_path / "data", ignore_errors=True)

"""What filters say on the Milvus backend (issue #26, item 5), `hlm serve` against `milvus-lite
server` on loopback: Milvus cannot list attribute values without a scan of the collection, so
/v1/info says they are not listed, a filter is applied as given (an unknown attribute matches
nothing, a 200 as before), and hits asked for their attributes come without them, with a
warning that says so. (The hnswlib backend's answers: tests/service/test_filters.py.)"""

from __future__ import annotations

import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")
httpx = pytest.importorskip("httpx")

from retrieval.milvus import push_artifact  # noqa: E402

from .conftest import LiteServer, free_port  # noqa: E402
from .test_milvus_http import serve, wait_ready  # noqa: E402


@pytest.mark.slow
def test_on_milvus_filters_are_applied_as_given_and_said_to_be_unlisted(tmp_path, artifact):
    milvus = LiteServer(tmp_path / "milvus", free_port()).start()
    proc = None
    try:
        push_artifact(artifact, milvus.uri, "kw")
        log = tmp_path / "serve.log"
        proc, url = serve(artifact, log, index_backend="milvus", milvus_uri=milvus.uri, milvus_collection="kw",
                          warmup_rounds=1)
        client = httpx.Client(base_url=url, timeout=30)
        wait_ready(client, proc, log)
        filters = client.get("/v1/info").json()["filters"]
        assert filters["listed"] is False and "milvus" in filters["note"]
        unknown = client.post("/v1/search", json={"query": "cordless drill", "k": 5, "filter": {"Source": "hd"}})
        assert unknown.status_code == 200 and unknown.json()["results"][0]["keywords"] == []
        body = client.post("/v1/search", json={"query": "cordless drill", "k": 5, "filter": {"source": "mq"},
                                               "attributes": True}).json()
        hits = body["results"][0]["keywords"]
        assert hits and all(h["id"].startswith("mq:") and "attributes" not in h for h in hits)
        assert body["warnings"] == ["attributes: the milvus backend does not return keyword attributes; "
                                    "hits come without them."]
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        milvus.kill()

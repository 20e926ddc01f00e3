"""`"fusion": "rrf"`: the dense hits fused with BM25 over the keyword texts (retrieval/lexical.py),
on a real `hlm serve` of the product's student; the fused list checked against the fusion
recomputed from the service's own dense answer and the artifact's BM25 index."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from artifact.manifest import read_manifest
from artifact.store import read_store
from retrieval.lexical import LexicalIndex, rrf
from service.errors import InvalidRequest
from service.serving import FUSION_DEPTH, check_fusion

QUERIES = ["cordless drill", "garden hose 50 ft", "white paint for ceilings", "how to fix a leaky faucet"]


def search(server, **body):
    response = server.client.post("/v1/search", json=body)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def lexical(static_artifact):
    manifest = read_manifest(static_artifact)
    assert manifest["lexical"]["library"] == "bm25s"
    ids, _ = read_store(static_artifact / manifest["index"]["store"])
    return LexicalIndex(static_artifact / manifest["lexical"]["path"], ids)


@pytest.mark.parametrize("query", QUERIES)
def test_the_fused_list_is_the_rrf_of_the_dense_top_and_bm25s_top(static_server, lexical, query):
    fused = search(static_server, query=query, k=10, fusion="rrf")
    dense = search(static_server, query=query, k=FUSION_DEPTH, ef=fused["ef"])
    assert fused["fusion"] == "rrf" and fused["k"] == 10 and "lexical_ms" in fused["timings"]
    hits = fused["results"][0]["keywords"]
    bm25 = [lexical.ids[row] for row, _ in lexical.search([query], FUSION_DEPTH)[0]]
    expected = rrf([h["id"] for h in dense["results"][0]["keywords"]], bm25, k=10)
    assert [h["id"] for h in hits] == [kid for kid, _ in expected]
    assert [h["score"] for h in hits] == pytest.approx([score for _, score in expected])
    assert len({h["id"] for h in hits}) == len(hits) == 10


def test_bm25_brings_in_what_the_dense_top_misses(static_server, lexical):
    """Over these queries some fused hit comes from BM25 alone: the fusion is not the dense list."""
    brought = 0
    for query in QUERIES:
        dense = {h["id"] for h in search(static_server, query=query, k=10)["results"][0]["keywords"]}
        fused = {h["id"] for h in search(static_server, query=query, k=10, fusion="rrf")["results"][0]["keywords"]}
        brought += len(fused - dense)
    assert brought > 0


def test_a_filter_applies_to_both_sides_and_an_artifact_without_bm25_is_a_422(static_server, lexical):
    flt = {"source": "mq"}
    for query in QUERIES:
        fused = search(static_server, query=query, k=10, fusion="rrf", filter=flt, attributes=True)
        hits = fused["results"][0]["keywords"]
        assert hits and all(h["id"].startswith("mq:") and h["attributes"]["source"] == "mq" for h in hits)
        dense = search(static_server, query=query, k=FUSION_DEPTH, ef=fused["ef"], filter=flt)
        bm25 = [lexical.ids[row] for row, _ in lexical.search([query], FUSION_DEPTH)[0]]
        expected = rrf([h["id"] for h in dense["results"][0]["keywords"]], [i for i in bm25 if i.startswith("mq:")], k=10)
        assert [h["id"] for h in hits] == [kid for kid, _ in expected]
    response = static_server.client.post("/v1/search", json={"query": "drill", "fusion": "bm25"})
    assert response.status_code == 422
    with pytest.raises(InvalidRequest, match="no lexical index"):
        check_fusion(SimpleNamespace(lexical=None), SimpleNamespace(filter=None))

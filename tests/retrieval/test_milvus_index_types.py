"""`hlm index push --index-type`: the same compression on Milvus (issue #24), against a real milvus-lite.

milvus-lite 3.2 builds HNSW, HNSW_SQ, IVF_FLAT and IVF_SQ8 (faiss) and refuses IVF_PQ, HNSW_PQ,
IVF_RABITQ and DISKANN; a refusal is one sentence, and the collection it leaves is redone by the
next push. An IVF collection is searched with nprobe (HLM_MILVUS_NPROBE), an HNSW one with ef.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from typer.testing import CliRunner  # noqa: E402

from hlm.cli import app  # noqa: E402
from retrieval.base import SearchParams  # noqa: E402
from retrieval.exact import exact_top_k, recall_at_k  # noqa: E402
from retrieval.milvus import INDEX_TYPES, MilvusIndex, PushRefused, index_build_params, push_artifact  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def queries(keywords) -> np.ndarray:
    """Keyword vectors moved a little: queries whose neighbours are known to exact search."""
    vectors = keywords[2][:40] + 0.3 * np.random.default_rng(7).standard_normal((40, 768), dtype=np.float32) / np.sqrt(768)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def truth(keywords, queries, k=10):
    ids, _, vectors = keywords
    return [[ids[i] for i in row] for row in exact_top_k(vectors, queries, k).tolist()]


def found(index, queries, k=10, ef=64):
    return [[h.id for h in row] for row in index.search(queries, SearchParams(k=k, ef=ef))]


def test_build_parameters_follow_the_type_and_the_size():
    assert index_build_params("HNSW", 500, 768) == {"M": 32, "efConstruction": 200}
    assert index_build_params("ivf_sq8", 12000, 768) == {"nlist": 438}  # 4 x sqrt(n)
    assert index_build_params("IVF_PQ", 500, 768) == {"nlist": 89, "m": 96, "nbits": 8}
    assert index_build_params("HNSW_SQ", 500, 768, M=16)["sq_type"] == "SQ8"
    with pytest.raises(ValueError, match="divide"):
        index_build_params("IVF_PQ", 500, 768, pq_m=100)
    with pytest.raises(ValueError, match="unknown index type"):
        index_build_params("LSH", 500, 768)


def test_an_ivf_collection_is_searched_with_nprobe(lite_server, artifact, manifest, keywords, queries):
    """IVF_FLAT with every list probed is exact search: recall 1.0. Searched with ef instead
    (milvus-lite then probes its default 10 of 89 lists), it is not."""
    message = push_artifact(artifact, lite_server.uri, "ivf_flat", index_type="IVF_FLAT")
    assert "index IVF_FLAT" in message and '"nlist": 89' in message
    index = MilvusIndex(lite_server.uri, "ivf_flat", dim=768, artifact_sha256=manifest["artifact_sha256"], nprobe=89)
    try:
        index.verify()
        assert index.index_type == "IVF_FLAT" and index.index_params == {"nlist": 89}
        assert index.search_params(64)["params"] == {"nprobe": 89}
        assert recall_at_k(found(index, queries), truth(keywords, queries)) == 1.0
        index.nprobe = 1
        assert recall_at_k(found(index, queries), truth(keywords, queries)) < 1.0  # nprobe reaches Milvus
    finally:
        index.close()
    default = MilvusIndex(lite_server.uri, "ivf_flat", dim=768, artifact_sha256=manifest["artifact_sha256"])
    assert default.nprobe == 11  # HLM_MILVUS_NPROBE's default: nlist / 8, at least 8
    default.close()


@pytest.mark.parametrize("kind", ["HNSW_SQ", "IVF_SQ8"])
def test_the_compressed_types_milvus_lite_builds_keep_recall(lite_server, artifact, manifest, keywords, queries, kind):
    name = f"kw_{kind.lower()}"
    push_artifact(artifact, lite_server.uri, name, index_type=kind)
    index = MilvusIndex(lite_server.uri, name, dim=768, artifact_sha256=manifest["artifact_sha256"], nprobe=89)
    try:
        assert index.index_type == kind
        assert recall_at_k(found(index, queries, ef=128), truth(keywords, queries)) >= 0.9
    finally:
        index.close()


@pytest.mark.parametrize("kind", ["IVF_PQ", "HNSW_PQ", "IVF_RABITQ", "DISKANN"])
def test_a_type_milvus_lite_does_not_build_is_refused_with_a_sentence(lite_server, artifact, manifest, kind):
    name = f"refused_{kind.lower()}"
    with pytest.raises(PushRefused) as caught:
        push_artifact(artifact, lite_server.uri, name, index_type=kind)
    message = str(caught.value)
    assert kind in message and "--index-type" in message and "\n" not in message
    # what it left is incomplete: the service refuses it, the next push redoes it
    with pytest.raises(ValueError, match="incomplete"):
        MilvusIndex(lite_server.uri, name, dim=768, artifact_sha256=manifest["artifact_sha256"]).verify()
    assert push_artifact(artifact, lite_server.uri, name).startswith("pushed 500 keywords")


def test_another_index_type_on_a_complete_collection_needs_replace(lite_server, artifact):
    push_artifact(artifact, lite_server.uri, "typed")
    with pytest.raises(PushRefused, match="indexed HNSW, not IVF_SQ8; pass --replace"):
        push_artifact(artifact, lite_server.uri, "typed", index_type="IVF_SQ8")
    assert "index IVF_SQ8" in push_artifact(artifact, lite_server.uri, "typed", index_type="IVF_SQ8", replace=True)
    assert "nothing to do" in push_artifact(artifact, lite_server.uri, "typed", index_type="IVF_SQ8")


def test_the_cli(lite_server, artifact, tmp_path):
    runner = CliRunner()
    bad = runner.invoke(app, ["index", "push", str(artifact), "--uri", lite_server.uri, "--index-type", "LSH"])
    assert bad.exit_code == 2 and "unknown --index-type 'LSH'" in bad.output and "Traceback" not in bad.output
    refused = runner.invoke(app, ["index", "push", str(artifact), "--uri", lite_server.uri, "--collection", "cli_pq",
                                  "--index-type", "IVF_PQ"])
    assert refused.exit_code == 2 and "does not build index type IVF_PQ" in refused.output
    assert "Traceback" not in refused.output
    out = tmp_path / "agreement.json"
    measured = runner.invoke(app, ["index", "agreement", str(artifact), "--uri", lite_server.uri, "--collection", "agree",
                                   "--queries", "20", "--index-type", "HNSW", "--index-type", "IVF_SQ8",
                                   "--index-type", "DISKANN", "--nprobe", "4", "--nprobe", "89", "--out", str(out)])
    assert measured.exit_code == 0, measured.output
    rows = json.loads(out.read_text())
    assert [(r["index_type"], r["search"]) for r in rows["rows"]] == [
        ("HNSW", {"ef": 64}), ("IVF_SQ8", {"nprobe": 4}), ("IVF_SQ8", {"nprobe": 89})]
    assert all(r["index_build_s"] is not None and 0 <= r["recall_milvus"] <= 1 for r in rows["rows"])
    assert rows["refused"][0]["index_type"] == "DISKANN" and "does not build" in rows["refused"][0]["refused"]
    assert "| IVF_SQ8 | nlist 89 | nprobe 89 |" in measured.output
    assert set(INDEX_TYPES) >= {r["index_type"] for r in rows["rows"]}

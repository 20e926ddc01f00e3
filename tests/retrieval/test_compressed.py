"""The compressed index (retrieval/compressed.py) on the small artifact's real keyword vectors:
its answers against exact search, filters, live upserts and deletes, and the checks at load."""

from __future__ import annotations

import numpy as np
import pytest

from artifact.manifest import read_manifest
from artifact.store import read_store
from retrieval.base import SearchParams
from retrieval.compressed import CompressedIndex, build_compressed, choose_precision
from retrieval.exact import exact_top_k
from retrieval.hnsw import HnswIndex


@pytest.fixture(scope="module")
def keywords(small_artifact):
    """(ids, texts, the teacher's keyword vectors) of the small artifact."""
    manifest = read_manifest(small_artifact)
    idx = manifest["index"]
    hnsw = HnswIndex(small_artifact / idx["path"], small_artifact / idx["store"], int(idx["dim"]), 64)
    ids, texts = read_store(small_artifact / idx["store"])
    return ids, texts, hnsw.vectors_of(ids), small_artifact / idx["store"]


def open_built(tmp_path, keywords, factory=None, nprobe=64, ef=64) -> CompressedIndex:
    ids, texts, vectors, store = keywords
    fields = build_compressed(vectors, tmp_path, factory, threads=1)
    assert fields["vectors"] == "index/vectors.f32"
    assert (tmp_path / "keywords.faiss").is_file() and (tmp_path / "vectors.f32").stat().st_size == vectors.size * 4
    assert fields["code_bytes"] <= 64
    return CompressedIndex(tmp_path / "keywords.faiss", tmp_path / "vectors.f32", store, vectors.shape[1], ef, nprobe)


def queries_near(vectors: np.ndarray, n: int = 40, seed: int = 0) -> np.ndarray:
    """Real keyword vectors moved a little: queries that are near, not on, the keywords."""
    rng = np.random.default_rng(seed)
    q = vectors[rng.choice(len(vectors), n, replace=False)] + 0.02 * rng.standard_normal((n, vectors.shape[1]))
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def test_every_list_scanned_and_every_keyword_reranked_is_exact_search(tmp_path, keywords):
    ids, _, vectors, _ = keywords
    index = open_built(tmp_path, keywords, nprobe=1024)
    q = queries_near(vectors)
    found = index.search(q, SearchParams(10, ef=len(ids)))
    truth = exact_top_k(vectors, q, 10)
    for row, true in zip(found, truth.tolist()):
        assert [hit.id for hit in row] == [ids[i] for i in true]
        # scores are the exact inner products of the stored float32 vectors
        assert np.allclose([hit.score for hit in row], (vectors[true] @ q[found.index(row)]), atol=1e-5)


def test_float16_vectors_rerank_as_float32_do_and_live_upserts_mix_in(tmp_path, keywords):
    ids, _, vectors, store = keywords
    fields = build_compressed(vectors, tmp_path, threads=1, precision="float16")
    assert fields["vectors"] == "index/vectors.f16" and fields["precision"] == "float16"
    assert (tmp_path / "vectors.f16").stat().st_size == vectors.size * 2 and not (tmp_path / "vectors.f32").exists()
    index = CompressedIndex(tmp_path / "keywords.faiss", tmp_path / "vectors.f16", store, vectors.shape[1], 64, 1024)
    q = queries_near(vectors, 20, seed=3)
    found = index.search(q, SearchParams(10, ef=len(ids)))
    for row, true, query in zip(found, exact_top_k(vectors, q, 10).tolist(), q):
        assert [hit.id for hit in row][:5] == [ids[i] for i in true][:5]
        # float16 keeps ~3 decimal digits a component: the scores within 1e-3 of float32's
        assert np.allclose([hit.score for hit in row], vectors[[ids.index(h.id) for h in row]] @ query, atol=1e-3)
    # a live upsert's vector (float32, in memory) is re-ranked beside the file's float16 rows
    index.upsert(["new:1"], q[0][None, :], ["a brand new keyword"], [{}])
    top = index.search(q[:1], SearchParams(3))[0]
    assert top[0].id == "new:1" and top[0].score == pytest.approx(1.0, abs=1e-5) and top[1].id == found[0][0].id
    with pytest.raises(ValueError, match="must end in .f32 or .f16"):
        CompressedIndex(tmp_path / "keywords.faiss", tmp_path / "keywords.faiss", store, vectors.shape[1], 64, 8)


def test_auto_precision_is_float32_while_the_file_fits_half_the_ram():
    gib = 2**30
    assert choose_precision(113_149, 768, ram=24 * gib) == "float32"  # the full artifact: 0.35 GB
    assert choose_precision(4_000_000, 768, ram=24 * gib) == "float32"  # 12.3 GB <= 12 GiB
    assert choose_precision(10_000_000, 768, ram=24 * gib) == "float16"  # 31 GB: session 10's 284 ms a query
    assert choose_precision(10_000_000, 768, ram=48 * gib) == "float16"  # fits the RAM, but not half of it
    assert choose_precision(10_000_000, 768, "float32", ram=24 * gib) == "float32"  # asked for, kept
    with pytest.raises(ValueError, match="unknown vector precision"):
        choose_precision(10, 768, "bfloat16")


def test_default_settings_find_most_of_the_exact_top_10(tmp_path, keywords):
    ids, _, vectors, _ = keywords
    index = open_built(tmp_path, keywords, nprobe=4, ef=32)
    q = queries_near(vectors, 100, seed=1)
    found = [[hit.id for hit in row] for row in index.search(q, SearchParams(10))]
    truth = [[ids[i] for i in row] for row in exact_top_k(vectors, q, 10).tolist()]
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
    assert recall >= 0.9, recall


def test_filters_upserts_and_deletes(tmp_path, keywords):
    ids, texts, vectors, _ = keywords
    index = open_built(tmp_path, keywords)
    q = queries_near(vectors, 5, seed=2)
    for row in index.search(q, SearchParams(10, filter={"source": "mq"})):
        assert row and all(hit.id.startswith("mq:") for hit in row)
    assert index.search(q, SearchParams(10, filter={"source": "nowhere"})) == [[] for _ in range(5)]

    target = q[0]
    index.upsert(["new:1"], target[None, :], ["a brand new keyword"], [{"source": "new"}])
    top = index.search(target[None, :], SearchParams(3))[0]
    assert top[0].id == "new:1" and top[0].score == pytest.approx(1.0, abs=1e-5)
    assert index.get("new:1") == ("a brand new keyword", {"source": "new"})
    assert index.search(target[None, :], SearchParams(3, filter={"source": "new"}))[0][0].id == "new:1"

    gone = top[1].id
    assert index.delete(["new:1", gone, "never-there"]) == 2
    after = [hit.id for hit in index.search(target[None, :], SearchParams(10))[0]]
    assert "new:1" not in after and gone not in after and len(after) == 10
    assert len(index) == len(ids) - 1 and index.get(gone) is None
    # an upsert of an existing id replaces it: one entry, the new text
    index.upsert([ids[0]], vectors[0][None, :], ["renamed"], [{}])
    assert len(index) == len(ids) - 1 and index.get(ids[0]) == ("renamed", {})


def test_a_vectors_file_of_the_wrong_size_or_dimension_is_refused(tmp_path, keywords):
    ids, _, vectors, store = keywords
    open_built(tmp_path, keywords)
    with open(tmp_path / "vectors.f32", "ab") as handle:
        handle.write(b"\0\0\0\0")
    with pytest.raises(ValueError, match="not the"):
        CompressedIndex(tmp_path / "keywords.faiss", tmp_path / "vectors.f32", store, vectors.shape[1], 64, 8)
    with pytest.raises(ValueError, match="384-d"):
        CompressedIndex(tmp_path / "keywords.faiss", tmp_path / "vectors.f32", store, 384, 64, 8)

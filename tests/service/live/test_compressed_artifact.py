"""The compressed index as a user gets it (issue #24): ``hlm build --index compressed`` makes a
verified artifact that ``hlm serve`` serves, takes live writes on, and ``hlm compact`` folds.

The tiny profile's 2,000 keywords in IVF32 with 16 lists scanned, the vectors stored as float16
(``--vector-precision``; float32, the choice at this size, is covered in
tests/retrieval/test_compressed.py): its answers are compared with the hnswlib artifact built
from the same teacher vectors (the static fixture), so the test fails if the compressed path
loses the neighbours, not only if it errors; compaction keeps the precision.
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow

TOKEN = "compressed-test-token-5d2e"
QUERIES = ["cordless drill", "garden hose", "led light bulbs", "kitchen faucet", "ceiling fan with light",
           "wood screws", "paint roller", "patio furniture", "water heater", "bathroom vanity"]


@pytest.fixture(scope="module")
def compressed_artifact(tmp_path_factory, run_hlm, data_dir, static_artifact):
    out = tmp_path_factory.mktemp("compressed") / "tiny"
    # The static fixture's build cache (its own, when it built here), so the student it trained
    # is reused: the index is what this build changes.
    cache = static_artifact.parent / "cache"
    env = {"HLM_CACHE_DIR": str(cache)} if cache.is_dir() else {}
    done = run_hlm("build", "--profile", "tiny", "--index", "compressed", "--vector-precision", "float16",
                   "--gate-share", "0.9", "--out", str(out), data_dir=data_dir, **env)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return out


def ids_of(srv, queries, k=10, encoder="teacher"):
    r = srv.client.post("/v1/search", json={"queries": list(queries), "k": k, "encoder": encoder})
    assert r.status_code == 200, r.text
    return [[kw["id"] for kw in res["keywords"]] for res in r.json()["results"]]


def test_the_manifest_names_the_compressed_index_and_its_float16_vectors(compressed_artifact):
    from artifact.manifest import verify

    idx = verify(compressed_artifact)["index"]
    assert idx["library"] == "faiss" and idx["factory"].startswith("IVF") and idx["vectors"] == "index/vectors.f16"
    assert idx["precision"] == "float16" and 1 <= idx["nprobe"] <= idx["lists"] and idx["ef"] >= 10
    assert (compressed_artifact / idx["vectors"]).stat().st_size == idx["count"] * idx["dim"] * 2


def test_an_unknown_vector_precision_is_refused_before_any_work(run_hlm, tmp_path, data_dir):
    done = run_hlm("build", "--profile", "tiny", "--index", "compressed", "--vector-precision", "int4",
                   "--out", str(tmp_path / "never"), data_dir=data_dir)
    assert done.returncode == 2 and "unknown vector precision 'int4'" in done.stderr, done.stderr
    assert "[build]" not in done.stdout + done.stderr and not (tmp_path / "never").exists()  # no step began


def test_served_writes_and_compaction_on_the_compressed_index(compressed_artifact, static_server, start_server,
                                                              tmp_path, run_hlm):
    state = tmp_path / "state"
    srv = start_server(compressed_artifact, admin_token=TOKEN, state_dir=state, shadow_rate=0, max_queue_wait_ms=0,
                       teacher_max_queue_wait_ms=0)
    srv.wait_for("/readyz")
    srv.client.headers["Authorization"] = f"Bearer {TOKEN}"
    info = srv.client.get("/v1/info").json()
    assert json.dumps(info).count("faiss") >= 1, info

    # The same teacher and keywords as the hnswlib artifact: the compressed index's top 10 must
    # mostly agree with the graph's (both near exact at these settings).
    ours, theirs = ids_of(srv, QUERIES), ids_of(static_server, QUERIES)
    overlap = sum(len(set(a) & set(b)) for a, b in zip(ours, theirs)) / (10 * len(QUERIES))
    assert overlap >= 0.9, (overlap, ours, theirs)

    # A live upsert is found first; a live delete never comes back.
    gone = ours[0][0]
    r = srv.client.post("/admin/keywords", json={
        "upsert": [{"id": "kw:new", "text": "cordless drill brushless 20v kit", "attributes": {"market": "de-DE"}}],
        "delete": [gone]})
    assert r.status_code == 200 and r.json()["upserted"] == 1 and r.json()["deleted"] == 1, r.text
    after = ids_of(srv, ["cordless drill brushless 20v kit", QUERIES[0]])
    assert after[0][0] == "kw:new" and gone not in after[1]
    r = srv.client.post("/v1/search", json={"query": "cordless drill", "filter": {"market": "de-DE"}})
    assert [kw["id"] for kw in r.json()["results"][0]["keywords"]] == ["kw:new"], r.text

    # hlm compact folds them into a new compressed artifact that serves them as is.
    out = tmp_path / "compacted"
    done = run_hlm("compact", "--artifact", str(compressed_artifact), "--state-dir", str(state), "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    srv.stop()
    from artifact.manifest import verify

    folded = verify(out)
    assert folded["index"]["library"] == "faiss" and folded["index"]["count"] == 2000
    assert folded["index"]["vectors"] == "index/vectors.f16"  # the precision it was built with
    folded_srv = start_server(out, shadow_rate=0, max_queue_wait_ms=0, teacher_max_queue_wait_ms=0)
    folded_srv.wait_for("/readyz")
    again = ids_of(folded_srv, ["cordless drill brushless 20v kit", QUERIES[0]])
    assert again[0][0] == "kw:new" and gone not in again[1]
    folded_srv.stop()

"""POST/GET /admin/keywords and search filters against the real service on loopback."""

from __future__ import annotations

import json
import random

import pytest

from http_helpers import error_of, metrics, value

TOKEN = "live-test-token-31c7"
WORDS = ("cordless", "drill", "garden", "hose", "copper", "pipe", "led", "bulb", "oak", "cabinet", "paint", "roller",
         "patio", "heater", "brass", "faucet", "vinyl", "plank", "solar", "lantern", "steel", "shelf", "ceramic",
         "tile", "cedar", "fence", "electric", "mower", "glass", "door", "marble", "sink", "bamboo", "blind")

pytestmark = pytest.mark.slow


def phrases(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out: set[str] = set()
    while len(out) < n:
        out.add(" ".join(rng.sample(WORDS, 5)))
    return sorted(out)


@pytest.fixture(scope="module")
def live_server(start_server, tmp_path_factory):
    # A state folder of its own; the result cache on, to test its invalidation (a reload
    # re-reads the same small artifact: a swap all the same).
    srv = start_server(admin_token=TOKEN, state_dir=tmp_path_factory.mktemp("live-state"),
                       result_cache_bytes=1 << 20, shadow_rate=0, max_queue_wait_ms=0, teacher_max_queue_wait_ms=0,
                       max_keyword_items=300)
    srv.wait_for("/readyz")
    srv.client.headers["Authorization"] = f"Bearer {TOKEN}"
    return srv


def change(srv, upsert=(), delete=()):
    return srv.client.post("/admin/keywords", json={"upsert": list(upsert), "delete": list(delete)})


def search(srv, queries, k=10, encoder="teacher", **extra):
    r = srv.client.post("/v1/search", json={"queries": list(queries), "k": k, "encoder": encoder, **extra})
    assert r.status_code == 200, r.text
    return [[kw["id"] for kw in res["keywords"]] for res in r.json()["results"]]


def test_upserted_keywords_are_found_first_and_deleted_ones_never_come_back(live_server):
    srv = live_server
    texts = phrases(200, seed=11)
    items = [{"id": f"kw:{i}", "text": t, "attributes": {"market": "de-DE" if i % 4 == 0 else "en-US",
                                                         "campaign": i % 10, "active": i % 2 == 0}}
             for i, t in enumerate(texts)]
    r = change(srv, items)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"upserted", "deleted", "sequence"} and body["upserted"] == 200 and body["deleted"] == 0
    assert srv.client.get("/admin/keywords/kw:17").json() == {"id": "kw:17", "text": texts[17],
                                                             "attributes": items[17]["attributes"]}
    for start in range(0, 200, 20):  # a query equal to a new keyword's text finds it first
        rows = search(srv, texts[start:start + 20], k=1)
        assert [row[0] for row in rows] == [f"kw:{i}" for i in range(start, start + 20)]

    # Delete a tenth of the new ones and some of the artifact's, by their exact texts.
    artifact_ids = ["hd:100001", "hd:100002", "mq:1", "mq:2"]
    artifact_texts = [srv.client.get(f"/admin/keywords/{kid}").json()["text"] for kid in artifact_ids]
    gone = [f"kw:{i}" for i in range(0, 200, 10)] + artifact_ids
    r = change(srv, delete=gone + ["kw:never"])
    assert r.status_code == 200 and r.json()["deleted"] == len(gone) and r.json()["sequence"] > body["sequence"]
    probes = [texts[i] for i in range(0, 200, 10)] + artifact_texts
    for flt in (None, {"market": ["de-DE", "en-US"]}, {"source": ["hd", "mq"]}, {"active": True}):
        extra = {"filter": flt} if flt else {}
        for encoder in ("teacher", "student"):
            for row in search(srv, probes, k=20, encoder=encoder, **extra):
                assert not set(row) & set(gone)
    for kid in gone:
        assert error_of(srv.client.get(f"/admin/keywords/{kid}"))["code"] == "keyword_not_found"

    # Filters are exact, and inside the search: k answers whenever k keywords match.
    alive = {it["id"]: it["attributes"] for it in items if it["id"] not in gone}
    de = {k for k, a in alive.items() if a["market"] == "de-DE"}
    c3 = {k for k, a in alive.items() if a["campaign"] in (3, 4) and a["active"]}
    for row in search(srv, ["oak cabinet", "paint roller"], k=10, filter={"market": "de-DE"}):
        assert set(row) <= de and len(row) == 10
    for row in search(srv, ["oak cabinet"], k=40, filter={"campaign": [3, 4], "active": True}):
        assert set(row) == c3  # fewer match than k: every one of them, nothing else
    assert search(srv, ["oak cabinet"], k=5, filter={"market": "fr-FR"}) == [[]]
    rows = search(srv, ["garden hose"], k=10, filter={"source": "mq"})
    assert len(rows[0]) == 10 and all(kid.startswith("mq:") for kid in rows[0])
    m = metrics(srv)
    assert value(m, "hlm_keyword_changes_total", op="upsert", outcome="ok") == 200
    assert value(m, "hlm_keyword_changes_total", op="delete", outcome="ok") == len(gone) + 1
    assert value(m, "hlm_keywords_live") == 500 + 200 - len(gone)


def test_the_result_cache_is_emptied_by_a_keyword_change_and_by_a_swap(live_server):
    srv = live_server
    query = "brass faucet marble sink bamboo"
    hits = lambda: value(metrics(srv), "hlm_result_cache_total", encoder="teacher", result="hit")  # noqa: E731
    first = search(srv, [query])
    before = hits()
    assert search(srv, [query]) == first and hits() == before + 1  # answered from the cache

    assert change(srv, [{"id": "kw:cache", "text": query}]).status_code == 200
    assert search(srv, [query])[0][0] == "kw:cache"  # not the cached answer
    assert change(srv, delete=["kw:cache"]).status_code == 200
    assert search(srv, [query]) == first

    before = hits()
    assert search(srv, [query]) == first and hits() == before + 1
    r = srv.client.post("/admin/reload")
    assert r.status_code == 200, r.text
    before = hits()
    assert search(srv, [query]) == first and hits() == before  # a miss: the cache was emptied by the swap
    # The live changes came along onto the reloaded artifact.
    assert search(srv, [phrases(200, seed=11)[1]], k=1) == [["kw:1"]]
    assert error_of(srv.client.get("/admin/keywords/kw:0"))["code"] == "keyword_not_found"


@pytest.mark.parametrize("body, status, where", [
    ({"upsert": [{"id": "bad:1", "text": ""}]}, 422, "empty"),
    ({"upsert": [{"id": "bad:1", "text": "   \u200b "}]}, 422, "empty"),
    ({"upsert": [{"id": "bad:1", "text": "x" * 1001}]}, 422, "1001 characters"),
    ({"upsert": [{"id": "bad:1", "text": "a"}, {"id": "bad:1", "text": "b"}]}, 422, "more than once"),
    ({"upsert": [{"id": "bad:1", "text": "a"}], "delete": ["bad:1"]}, 422, "more than once"),
    ({"upsert": [{"id": f"bad:{i}", "text": "a"} for i in range(301)]}, 413, "At most 300"),
    ({"upsert": [{"id": "bad:1", "text": 5}]}, 422, "text"),
    ({"upsert": [{"id": 7, "text": "a"}]}, 422, "id"),
    ({"upsert": [{"id": "bad/1", "text": "a"}]}, 422, "id"),
    ({"upsert": {"id": "bad:1", "text": "a"}}, 422, "upsert"),
    ({"upsert": [{"id": "bad:1", "text": "a", "attributes": {"x": None}}]}, 422, "not null"),
    ({"upsert": [{"id": "bad:1", "text": "a", "attributes": {"x": {"y": 1}}}]}, 422, "not an object"),
    ({"upsert": [{"id": "bad:1", "text": "a", "attributes": {"x": [1]}}]}, 422, "not a list"),
    ({"upsert": [{"id": "bad:1", "text": "a", "attributes": {"bad name": 1}}]}, 422, "attribute name"),
    ({"upsert": [{"id": "bad:1", "text": "a", "attributes": {"x": "\ud800"}}]}, 422, "lone surrogate"),
    ({"upsert": [{"id": "bad:1", "text": "a", "attributes": {"x": 2**64}}]}, 422, "64 bits"),
    ({"upsert": [{"id": "bad:1", "text": "a", "extra": 1}]}, 422, "extra"),
    ({}, 422, "at least one"),
])
def test_bad_changes_are_refused_whole_with_nothing_applied(live_server, body, status, where):
    srv = live_server
    # json.dumps escapes a lone surrogate as \ud800 (valid JSON); httpx's json= cannot encode it.
    r = srv.client.post("/admin/keywords", content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert where.lower() in error_of(r)["message"].lower()
    assert srv.client.get("/admin/keywords/bad:1").status_code == 404


def test_admin_keywords_need_the_token_and_filters_are_checked(live_server):
    srv = live_server
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}):
        r = srv.client.post("/admin/keywords", json={"delete": ["hd:100005"]}, headers=headers)
        assert r.status_code == 401 and error_of(r)["code"] == "unauthorized"
        assert srv.client.get("/admin/keywords/hd:100005", headers=headers).status_code == 401
    assert srv.client.get("/admin/keywords/hd:100005").status_code == 200  # nothing was deleted
    for flt, where in (({}, "empty"), ({"a b": 1}, "attribute name"), ({"x": None}, "not null"), ({"x": []}, "1 to 64"),
                       ({"x": {"y": 1}}, "not an object"), ([1], "object"), ({"x": "v" * 300}, "256"),
                       ({"x": ["ok", "\udc00"]}, "lone surrogate")):
        r = srv.client.post("/v1/search", content=json.dumps({"query": "paint", "filter": flt}),
                            headers={"content-type": "application/json"})
        assert r.status_code == 422 and where in error_of(r)["message"], (flt, r.text)


def test_without_a_state_folder_changes_are_refused_and_filters_still_work(start_server):
    srv = start_server(admin_token=TOKEN, shadow_rate=0)
    srv.wait_for("/readyz")
    srv.client.headers["Authorization"] = f"Bearer {TOKEN}"
    r = change(srv, [{"id": "kw:x", "text": "oak cabinet"}])
    assert r.status_code == 409 and "HLM_STATE_DIR" in error_of(r)["message"]
    assert srv.client.get("/admin/keywords/mq:1").json()["attributes"] == {"source": "mq"}
    rows = search(srv, ["oak cabinet"], k=10, filter={"source": "hd"})
    assert len(rows[0]) == 10 and all(kid.startswith("hd:") for kid in rows[0])
    srv.stop()
    bare = start_server(shadow_rate=0)  # no admin token: the routes do not exist
    bare.wait_for("/readyz")
    assert bare.client.post("/admin/keywords", json={"delete": ["x"]}).status_code == 404
    bare.stop()

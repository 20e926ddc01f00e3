"""Filters that say what they filter (issue #26, item 5), against the real service on loopback.

/v1/info lists the filterable attributes with their value counts; a filter naming an attribute
no keyword carries is a 422 that names the known ones; a known attribute with a value no keyword
has stays a 200 (a legitimate empty answer) with a sentence in `warnings`; hits carry their
attributes when asked. The reference for the counts is the artifact's own keyword store.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from http_helpers import error_of

pytestmark = pytest.mark.timeout(300)

ADMIN = "filters-test-token-7d1e"


def store_sources(artifact) -> Counter:
    """How many keywords of the artifact's store carry each `source` (the id's prefix, as the build derives it)."""
    manifest = json.loads((artifact / "manifest.json").read_text())
    lines = (artifact / manifest["index"]["store"]).read_text(encoding="utf-8").splitlines()
    return Counter(line.split("\t", 1)[0].split(":", 1)[0] for line in lines[1:] if line)


def search(server, **body):
    return server.client.post("/v1/search", json={"query": "garden hose", "k": 10} | body)


def test_info_lists_the_filterable_attributes_with_their_counts(server, small_artifact):
    filters = server.client.get("/v1/info").json()["filters"]
    assert filters["listed"] is True
    expected = store_sources(small_artifact)
    assert set(expected) == {"hd", "mq"}
    source = filters["attributes"]["source"]
    assert {v["value"]: v["keywords"] for v in source["values"]} == dict(expected)
    assert source["keywords"] == sum(expected.values()) and source["distinct"] == 2
    counts = [v["keywords"] for v in source["values"]]
    assert counts == sorted(counts, reverse=True)  # the most common first


@pytest.mark.parametrize("flt, unknown", [({"Source": "hd"}, "'Source'"), ({"market": "en-US"}, "'market'"),
                                          ({"source": "hd", "colour": ["red"]}, "'colour'")])
@pytest.mark.parametrize("encoder", ["student", "teacher"])
def test_an_unknown_attribute_is_a_422_naming_the_known_ones(server, flt, unknown, encoder):
    response = search(server, filter=flt, encoder=encoder)
    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "unknown_attribute"
    assert unknown in error["message"] and "'source'" in error["message"] and "/v1/info" in error["message"]


def test_a_known_attribute_with_an_unknown_value_is_an_empty_answer_with_a_warning(server):
    response = search(server, filter={"source": "HD"})
    assert response.status_code == 200
    body = response.json()
    assert body["results"][0]["keywords"] == []
    assert len(body["warnings"]) == 1
    assert 'source = "HD"' in body["warnings"][0] and "nothing can match" in body["warnings"][0]

    # One unknown value among known ones: the known ones still answer, the stray one is named.
    body = search(server, filter={"source": ["mq", "web"]}).json()
    hits = body["results"][0]["keywords"]
    assert hits and all(h["id"].startswith("mq:") for h in hits)
    assert '"web"' in body["warnings"][0] and "nothing can match" not in body["warnings"][0]


def test_a_plain_search_has_no_warnings_and_no_attributes(server):
    body = search(server, filter={"source": "hd"}).json()
    assert "warnings" not in body
    hits = body["results"][0]["keywords"]
    assert hits and all(set(h) == {"id", "text", "score"} for h in hits)


@pytest.mark.parametrize("encoder", ["student", "teacher"])
def test_hits_carry_their_attributes_when_asked(server, encoder):
    plain = search(server, encoder=encoder).json()
    body = search(server, encoder=encoder, attributes=True).json()
    hits = body["results"][0]["keywords"]
    # The same answer, each hit with its keyword's attributes (the build's: source = the id's prefix).
    assert [(h["id"], h["score"]) for h in hits] == [(h["id"], h["score"]) for h in plain["results"][0]["keywords"]]
    assert hits
    for hit in hits:
        assert hit["attributes"] == {"source": hit["id"].split(":", 1)[0]}


def test_the_schema_documents_the_attributes_field(server):
    schema = server.client.get("/openapi.json").json()
    request = schema["paths"]["/v1/search"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert request["properties"]["attributes"]["type"] == "boolean"
    assert request["properties"]["attributes"]["default"] is False
    refused = search(server, attributes="yes")
    assert refused.status_code == 422 and "attributes" in error_of(refused)["message"]


def test_live_keywords_attributes_are_listed_filterable_and_carried(start_server, tmp_path):
    srv = start_server(admin_token=ADMIN, state_dir=tmp_path / "state", shadow_rate=0)
    srv.wait_for("/readyz")
    auth = {"Authorization": f"Bearer {ADMIN}"}
    assert search(srv, filter={"campaign": "c-17"}).status_code == 422  # no keyword carries it yet
    change = {"upsert": [{"id": "kw:1", "text": "garden hose 50 ft", "attributes": {"campaign": "c-17", "active": True}},
                         {"id": "kw:2", "text": "expandable garden hose", "attributes": {"campaign": "c-18", "active": True}}]}
    assert srv.client.post("/admin/keywords", json=change, headers=auth).status_code == 200
    filters = srv.client.get("/v1/info", headers=auth).json()["filters"]["attributes"]
    assert {v["value"]: v["keywords"] for v in filters["campaign"]["values"]} == {"c-17": 1, "c-18": 1}
    assert filters["active"]["values"] == [{"value": True, "keywords": 2}]
    body = search(srv, filter={"campaign": "c-17"}, attributes=True).json()
    assert [h["id"] for h in body["results"][0]["keywords"]] == ["kw:1"]
    assert body["results"][0]["keywords"][0]["attributes"] == {"campaign": "c-17", "active": True}
    # Deleted, the attribute is unknown again: nothing carries it.
    assert srv.client.post("/admin/keywords", json={"delete": ["kw:1", "kw:2"]}, headers=auth).status_code == 200
    assert search(srv, filter={"campaign": "c-17"}).status_code == 422
    assert "campaign" not in srv.client.get("/v1/info", headers=auth).json()["filters"]["attributes"]

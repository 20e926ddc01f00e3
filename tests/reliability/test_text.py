"""Strange but valid text gets a normal answer from the real server."""

from __future__ import annotations

import pytest

ODD = {
    "emoji": "cordless drill \U0001F6E0\uFE0F\U0001F44D\U0001F3FD",
    "rtl_hebrew": "מקדחה אלחוטית",
    "rtl_arabic": "مثقاب لاسلكي",
    "bidi_mixed": "drill \u202eلاسلكي\u202c 18v",
    "zero_width": "cord\u200bless\u200c dr\u200dill\ufeff",
    "combining": "e\u0301e\u0301 cafe\u0301",
    "cjk": "电钻 コードレスドリル",
    "exotic_spaces": "garden\u00a0hose\u3000\u2003fifty",
    "controls": "paint\x00\x07 roller\x1b",
    "lone_surrogate_escape": None,  # sent as raw JSON below
}


@pytest.mark.parametrize("name", sorted(ODD))
@pytest.mark.parametrize("encoder", ["student", "teacher"])
def test_odd_text_gets_a_normal_answer(rserver, name, encoder):
    if ODD[name] is None:
        response = rserver.client.post("/v1/search", content=b'{"query": "drill \\ud800 bit", "k": 3, "encoder": "%s"}'
                                       % encoder.encode(), headers={"content-type": "application/json"})
    else:
        response = rserver.client.post("/v1/search", json={"query": ODD[name], "k": 3, "encoder": encoder})
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    assert len(result["keywords"]) == 3 and result["truncated"] is False


@pytest.mark.parametrize("encoder", ["student", "teacher"])
def test_a_10k_character_query_is_answered_truncated_and_flagged(rserver, encoder):
    query = ("cordless drill with two batteries and charger " * 220)[:10_000]
    response = rserver.client.post("/v1/search", json={"queries": [query, "paint"], "k": 5, "encoder": encoder})
    assert response.status_code == 200, response.text
    long, short = response.json()["results"]
    assert long["truncated"] is True and short["truncated"] is False
    assert len(long["keywords"]) == 5 and long["query"] == query


def test_past_the_character_bound_is_refused(rserver):
    response = rserver.client.post("/v1/search", json={"query": "a " * 10_001})
    assert response.status_code == 422 and "more than the limit of 20000" in response.text

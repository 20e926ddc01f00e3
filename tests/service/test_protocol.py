"""Request parsing and query clean-up, without a server."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.errors import describe_validation
from artifact.text import normalise_text
from service.protocol import EmbedRequest, SearchRequest
from service.serving import parse
from service.settings import Settings

CTX = {"settings": Settings(max_k=50, max_ef=500, max_queries=4, max_query_chars=100)}


def ok(body: bytes) -> SearchRequest:
    return parse(SearchRequest, body, CTX)


def bad(body: bytes, model=SearchRequest) -> str:
    with pytest.raises(ValidationError) as info:
        parse(model, body, CTX)
    return describe_validation(info.value.errors(include_url=False))


def test_single_and_batch():
    assert ok(b'{"query": "drill"}').texts == ["drill"]
    req = ok(b'{"queries": ["a", " b "], "k": 50, "ef": 500, "encoder": "teacher"}')
    assert req.texts == ["a", "b"] and req.k == 50 and req.ef == 500 and req.encoder == "teacher"
    assert ok(b'{"query": "x"}').encoder == "student"


def test_control_characters_and_surrogates_are_replaced():
    assert normalise_text("\x00dr\x07ill\x1b[0m\x85 saw\t") == "dr ill [0m saw"
    assert ok(b'{"query": "\\u0000 drill \\ud800"}').texts == ["drill"]


@pytest.mark.parametrize(
    "body, words",
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b'{"query": "\xff"}', "not valid JSON"),
        (b"[1]", "object"),
        (b'{"query": ""}', "empty"),
        (b'{"query": " \\t\\u0001 "}', "empty"),
        (b'{"queries": ["a", "  "]}', "queries[1] is empty"),
        (b"{}", "exactly one"),
        (b'{"query": "a", "queries": ["b"]}', "exactly one"),
        (b'{"query": 5}', "string"),
        (b'{"queries": "a"}', "array"),
        (b'{"queries": []}', "at least 1"),
        (b'{"queries": ["a","b","c","d","e"]}', "at most 4 queries"),
        (b'{"query": "' + b"a" * 101 + b'"}', "more than the limit of 100"),
        (b'{"query": "a", "k": 0}', "k must be between 1 and 50"),
        (b'{"query": "a", "k": 51}', "k must be between 1 and 50"),
        (b'{"query": "a", "k": "3"}', "integer"),
        (b'{"query": "a", "k": 2.5}', "integer"),
        (b'{"query": "a", "k": true}', "integer"),
        (b'{"query": "a", "ef": 501}', "ef must be between 1 and 500"),
        (b'{"query": "a", "encoder": "huge"}', "'student' or 'teacher'"),
        (b'{"query": "a", "top_k": 3}', "Extra inputs"),
        (b"[" * 100000, "not valid JSON"),
    ],
)
def test_invalid_bodies(body, words):
    assert words in bad(body)


def test_embed_request_has_no_k():
    assert "Extra inputs" in bad(b'{"query": "a", "k": 3}', EmbedRequest)
    assert parse(EmbedRequest, b'{"queries": ["a"]}', CTX).texts == ["a"]


def test_a_query_of_only_zero_width_characters_is_refused_as_empty():
    with pytest.raises(ValidationError, match="empty"):
        SearchRequest.model_validate_json('{"query": "\u200b\u200d\ufeff"}', context=CTX)

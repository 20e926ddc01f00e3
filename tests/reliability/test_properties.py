"""Property tests (hypothesis): text clean-up, the request models, and batching.

Batching runs the service's own batch function (``Runtime.run_batch``) on the real
small artifact: every job's answer must not depend on which other jobs share its batch,
nor on their order.
"""

from __future__ import annotations

import html.entities
import json
import re
import unicodedata

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from pydantic import ValidationError

from artifact.text import normalise_text
from service.batcher import Job
from service.metrics import Metrics
from service.protocol import EmbedRequest, SearchRequest
from service.loader import load_manifest
from service.runtime import Query, Runtime
from service.serving import parse
from service.settings import Settings

CTX = {"settings": Settings(max_k=50, max_ef=500, max_queries=4, max_query_chars=300)}

# Text with the awkward parts over-represented: controls, surrogates, zero-width and
# bidi marks, combining marks, RTL scripts, emoji, exotic spaces.
ODD = "\x00\x07\t\n\r\x1b\x7f\x85\x9f\u00a0\u200b\u200c\u200d\u200e\u200f\u2028\u2029\u202e\u2066\ufeff\u0301\u0308" \
      "\u05d0\u05e9\u0627\u0644\u0639\u0631\u0628\u064a\u0629\U0001F600\U0001F44D\U0001F3FD\u3000\ud800\udfff"
texts = st.text(alphabet=st.one_of(st.characters(), st.sampled_from(ODD)), max_size=60)
# ... and with HTML character references and their pieces, escaped escapes included
# ("&amp;amp;", "&&#35;38;" -> "&#38;" -> "&"), for the clean-up's decoding.
PIECES = ["&", ";", "#", "amp", "amp;", "&amp;", "&#39;", "&#x26;", "&#38;", "&#35;", "&lt;", "&nbsp;", "&#8203;",
          "&#1;", "&#894;", "&#769;", "&#8490;", "&hellip", "&not", "lt", "x2", "6", "3", "8", "\u037e", "\u0301"]
entity_texts = st.lists(st.one_of(st.sampled_from(PIECES), st.characters()), max_size=12).map("".join)


def decodable_reference(text: str) -> str | None:
    """A complete HTML character reference left in ``text`` that HTML would decode (numeric up to
    10 digits, or a known name), found by the standard library's table, not by artifact/text.py."""
    for match in re.finditer(r"&(#[0-9]{1,10}|#[xX][0-9a-fA-F]{1,8}|[A-Za-z][A-Za-z0-9]*);", text):
        if match.group(1).startswith("#") or match.group(1) + ";" in html.entities.html5:
            return match.group(0)
    return None


@given(texts)
def test_normalise_text_leaves_no_control_or_invisible_characters(text):
    assume("&" not in text)  # references: the next test
    out = normalise_text(text)
    assert out == out.strip()
    assert not any(unicodedata.category(ch) in ("Cc", "Cf", "Cs") for ch in out)
    # Everything visible survives, in order (compared after NFC, which may compose marks).
    kept = [ch for ch in unicodedata.normalize("NFC", text) if unicodedata.category(ch) not in ("Cc", "Cf", "Cs")]
    assert "".join(ch for ch in out if not ch.isspace()) == "".join(ch for ch in kept if not ch.isspace())


@settings(max_examples=500)
@given(entity_texts)
def test_normalise_text_leaves_no_reference_to_decode(text):
    out = normalise_text(text)
    assert decodable_reference(out) is None, (text, out)
    assert not any(unicodedata.category(ch) in ("Cc", "Cf", "Cs") for ch in out)


@settings(max_examples=500)
@given(st.one_of(texts, entity_texts))
def test_normalise_text_is_idempotent_nfc_and_single_spaced(text):
    out = normalise_text(text)
    assert normalise_text(out) == out
    assert unicodedata.is_normalized("NFC", out)
    assert out == out.strip() and "  " not in out
    assert not any(unicodedata.category(ch) == "Cc" for ch in out)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False) | texts,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
bodies = st.fixed_dictionaries({}, optional={
    "query": json_values | texts, "queries": st.lists(texts, max_size=6) | json_values,
    "k": st.integers(-5, 80) | json_values, "ef": st.integers(-5, 800) | json_values,
    "encoder": st.sampled_from(["student", "teacher", "Student", ""]) | json_values,
}) | json_values


@pytest.mark.parametrize("model", [SearchRequest, EmbedRequest])
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies)
def test_request_models_accept_only_what_they_promise(model, body):
    raw = json.dumps(body).encode()
    try:
        req = parse(model, raw, CTX)
    except ValidationError:
        return  # a 422 with a sentence; never any other exception
    limits = CTX["settings"]
    assert 1 <= len(req.texts) <= limits.max_queries
    assert all(t and t == normalise_text(t) for t in req.texts)
    assert req.encoder in ("student", "teacher")
    if model is SearchRequest:
        assert req.k is None or 1 <= req.k <= limits.max_k
        assert req.ef is None or 1 <= req.ef <= limits.max_ef


valid_searches = st.fixed_dictionaries(
    {"query": st.text(alphabet=st.characters(categories=("L", "N")), min_size=1, max_size=40)},
    optional={"k": st.integers(1, 50), "ef": st.integers(1, 500), "encoder": st.sampled_from(["student", "teacher"])},
)


@settings(max_examples=200)
@given(st.binary(max_size=200).map(lambda b: (b, None))
       | texts.map(lambda t: (t.encode("utf-8", "surrogatepass"), None))
       | valid_searches.map(lambda body: (json.dumps(body).encode(), body)))
def test_any_bytes_are_parsed_or_refused_with_a_validation_error(case):
    """Any bytes: a request within the bounds or a ValidationError (a 422), never another
    exception; and a body within the documented bounds is accepted as sent."""
    raw, valid = case
    try:
        req = parse(SearchRequest, raw, CTX)
    except ValidationError as exc:
        assert valid is None, f"a valid body was refused: {valid} -> {exc}"
        assert exc.errors()
        return
    limits = CTX["settings"]
    assert 1 <= len(req.texts) <= limits.max_queries and all(t and t == normalise_text(t) for t in req.texts)
    assert req.k is None or 1 <= req.k <= limits.max_k
    if valid is not None:
        assert req.texts == [normalise_text(valid["query"])]
        assert (req.k, req.ef, req.encoder) == (valid.get("k"), valid.get("ef"), valid.get("encoder", "student"))


# ---- batching on the real artifact ----


@pytest.fixture(scope="module")
def runtime(small_artifact):
    s = Settings(artifact_dir=small_artifact, warmup_rounds=0)
    rt = Runtime(s, load_manifest(s), Metrics())
    rt.load()
    return rt


QUERIES = ["cordless drill", "garden hose 50 ft", "led light bulbs", "wood screws", "paint", "how to fix a leaky faucet",
           "טלפון", "مثقاب لاسلكي", "drill \U0001F600", "zero\u200bwidth", "x" * 3000]
jobs_strategy = st.lists(
    st.tuples(st.lists(st.sampled_from(QUERIES), min_size=1, max_size=3), st.integers(1, 12), st.sampled_from([0, 8, 32, 64])),
    min_size=1, max_size=4,
)


def run(runtime, encoder, specs):
    jobs = [Job(Query(list(texts), k=k, ef=ef), size=len(texts)) for texts, k, ef in specs]
    return runtime.run_batch(runtime.slots[encoder], jobs)


def check_batching(runtime, encoder, specs, data, tol):
    together = run(runtime, encoder, specs)
    order = data.draw(st.permutations(range(len(specs))))
    shuffled = run(runtime, encoder, [specs[i] for i in order])
    for pos, i in enumerate(order):
        alone = run(runtime, encoder, [specs[i]])[0]
        for other in (together[i], shuffled[pos]):
            assert other.truncated == alone.truncated
            assert len(other.hits) == len(alone.hits) == len(specs[i][0])
            np.testing.assert_allclose([[h.score for h in row] for row in other.hits],
                                       [[h.score for h in row] for row in alone.hits], atol=tol)
            for a, b in zip([[h.id for h in row] for row in other.hits], [[h.id for h in row] for row in alone.hits]):
                # Same keywords in the same order, up to ties within the tolerance.
                if a != b:
                    assert tol and set(a) == set(b), (a, b)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=jobs_strategy, data=st.data())
def test_student_answers_do_not_depend_on_the_batch(runtime, specs, data):
    check_batching(runtime, "student", specs, data, tol=0.0)


@pytest.mark.slow
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=jobs_strategy, data=st.data())
def test_teacher_answers_do_not_depend_on_the_batch(runtime, specs, data):
    # fp32, one padded ONNX call per batch: equal to singles within float noise.
    check_batching(runtime, "teacher", specs, data, tol=1e-5)


def test_a_10k_character_query_is_answered_truncated(runtime):
    (answer,) = run(runtime, "student", [(["cordless drill " * 700], 5, 0)])
    assert answer.truncated == [True] and len(answer.hits[0]) == 5

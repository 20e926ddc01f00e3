"""Bad input: schemathesis against the running server's own /openapi.json.

Every route, positive and negative cases (invalid bodies, wrong types, out-of-range
values, odd strings): no 5xx, every status code, content type and body as documented,
invalid data refused with a 4xx. The admin reload itself is fuzzed without the token
(401; with it each call would load an artifact) and tested for real in test_reload.py.

(schemathesis' pytest plugin does not run under pytest 9 here, so the test drives each
operation's hypothesis strategy itself.)
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from .conftest import TOKEN

pytestmark = pytest.mark.timeout(600)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance, negative_data_rejection, positive_data_acceptance]
EXAMPLES = {GenerationMode.POSITIVE: 100, GenerationMode.NEGATIVE: 100}
# Invalid bodies of the routes whose texts carry the "not empty after clean-up" pattern cost
# schemathesis ~0.3-0.5 s each to generate (100 took 33-45 s per route, the whole invalid
# run 127 s against 16 s before the pattern): fewer of them, the same checks.
TEXT_ROUTES = {"POST /v1/search", "POST /v1/embed", "POST /v1/embeddings"}
TEXT_ROUTE_INVALID_EXAMPLES = 30


@pytest.fixture(scope="module")
def operations(rserver):
    schema = schemathesis.openapi.from_url(f"{rserver.url}/openapi.json")
    schema.config.generation.update(allow_x00=True)
    # 413 (body over HLM_MAX_BODY_BYTES) is a rejection too.
    schema.config.checks.negative_data_rejection.expected_statuses.append("413")
    # Valid input must be served: a 2xx, or a refusal that is about state, not the input: 401
    # (the reload is fuzzed without the token), 404 (an unknown keyword id), 409 (live
    # keywords are off on this server: no HLM_STATE_DIR). A 422 or 413 here is a bound the
    # schema does not state.
    schema.config.checks.positive_data_acceptance.expected_statuses = ["2xx", "401", "404", "409"]
    ops = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in ops} >= {"POST /v1/search", "POST /v1/embed", "GET /healthz", "GET /readyz",
                                        "GET /v1/info", "GET /metrics", "POST /admin/reload", "GET /admin/reload"}
    return ops


@schemathesis.check
def valid_search_accepted(ctx, response, case):
    """positive_data_acceptance, but a valid filter naming an attribute no keyword carries is
    refused (422 `unknown_attribute`, service/filters.py): a fact about the keywords, as a 404
    is about an id; the schema cannot list names that live keyword changes add and remove."""
    if response.status_code == 422 and response.json()["error"]["code"] == "unknown_attribute":
        return None
    return positive_data_acceptance(ctx, response, case)


def fuzz(rserver, op, mode: GenerationMode, token: bool) -> int:
    calls = []
    checks = CHECKS
    if op.label == "POST /v1/search":
        checks = [valid_search_accepted if check is positive_data_acceptance else check for check in CHECKS]
    if op.label in ("POST /v1/embeddings", "POST /admin/keywords"):
        # Valid input these two refuse is not in their schema: /v1/embeddings' `dimensions` must
        # equal the encoders' dimension, which the artifact fixes after the schema is built;
        # /admin/keywords' body (distinct ids across upsert and delete, a combined item count)
        # is described in prose and tested in tests/service/live/.
        checks = [check for check in CHECKS if check is not positive_data_acceptance]

    examples = EXAMPLES[mode]
    if mode is GenerationMode.NEGATIVE and op.label in TEXT_ROUTES:
        examples = TEXT_ROUTE_INVALID_EXAMPLES

    @given(case=op.as_strategy(generation_mode=mode))
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case):
        headers = {"Authorization": f"Bearer {TOKEN}"} if token else {}
        response = case.call_and_validate(base_url=rserver.url, headers=headers, checks=checks)
        calls.append(response.status_code)

    run()
    return len(calls)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_every_route_keeps_its_schema_on_generated_input(rserver, operations, mode):
    calls = 0
    for op in operations:
        reload = op.label == "POST /admin/reload"
        try:
            calls += fuzz(rserver, op, mode, token=not reload)
        except Unsatisfiable:
            # Nothing in a route without parameters or a documented body can be made invalid.
            assert mode is GenerationMode.NEGATIVE and (op.method.upper() == "GET" or not len(op.body)) or reload, \
                op.label
    assert calls >= 150  # routes without parameters yield one case each (none when invalid)
    assert rserver.client.get("/readyz").status_code == 200
    assert "Traceback" not in rserver.log()


def test_without_the_token_guarded_routes_answer_401(rserver, operations):
    guarded = [op for op in operations if op.path in ("/metrics", "/v1/info") or op.path.startswith("/admin/")]
    assert len(guarded) >= 4
    for op in guarded:
        fuzz(rserver, op, GenerationMode.POSITIVE, token=False)  # conforms to the documented 401
        if op.label not in ("GET /metrics", "GET /v1/info", "POST /admin/reload", "GET /admin/reload"):
            continue  # the live-keyword routes validate their path and body before the token
        response = httpx.request(op.method.upper(), f"{rserver.url}{op.path}")
        assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("label", ["POST /v1/search", "POST /v1/embed"])
def test_the_schema_says_exactly_one_of_query_or_queries_and_empty_bodies_are_a_documented_422(
        rserver, operations, label):
    op = next(op for op in operations if op.label == label)
    spec = rserver.client.get("/openapi.json").json()
    model = spec["paths"][op.path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    if "$ref" in model:
        model = spec["components"]["schemas"][model["$ref"].rsplit("/", 1)[-1]]
    assert [sorted(alt["required"]) for alt in model["oneOf"]] == [["query"], ["queries"]]
    for body in ({}, {"query": "drill", "queries": ["paint"]}, {"query": None}):
        case = op.Case(body=body, media_type="application/json")
        response = case.call_and_validate(base_url=rserver.url, checks=CHECKS,
                                          headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 422, (body, response.text)
        assert "exactly one of" in response.json()["error"]["message"]


def test_an_integral_float_is_an_integer_as_json_schema_says(rserver):
    response = rserver.client.post("/v1/search", json={"query": "drill", "k": 2.0, "ef": 16.0})
    assert response.status_code == 200 and response.json()["k"] == 2
    refused = rserver.client.post("/v1/search", json={"query": "drill", "k": 2.5})
    assert refused.status_code == 422

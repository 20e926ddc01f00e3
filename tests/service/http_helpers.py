"""Helpers shared by the service tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def error_of(response: httpx.Response) -> dict:
    """The JSON error body every 4xx/5xx must have."""
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] and body["error"]["message"], body
    assert "Traceback" not in response.text
    return body["error"]


def metrics(server) -> dict:
    """{(sample name, frozenset(labels)): value} from /metrics, parsed by prometheus_client."""
    response = server.client.get("/metrics")
    assert response.status_code == 200
    out = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)

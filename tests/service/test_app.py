"""The app in process, without its lifespan (nothing loaded): the edges that need no model."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import Settings
from http_helpers import error_of


def client(**settings) -> TestClient:
    app = create_app(Settings(artifact_dir="/nonexistent", **settings))
    return TestClient(app, raise_server_exceptions=False)


def test_before_start_up_nothing_is_ready():
    c = client()
    r = c.get("/readyz")
    assert r.status_code == 503 and r.json() == {"ready": False, "status": "starting"}
    assert c.get("/healthz").status_code == 200
    r = c.post("/v1/search", json={"query": "drill"})
    assert r.status_code == 503 and error_of(r)["code"] == "not_ready" and r.headers["retry-after"] == "1"


def test_admin_token_guards_metrics_and_info():
    c = client(admin_token="s3cret")
    for path in ("/metrics", "/v1/info"):
        r = c.get(path)
        assert r.status_code == 401 and error_of(r)["code"] == "unauthorized"
        assert c.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client().get("/metrics").status_code == 200  # off by default


def test_cors_is_closed_unless_configured():
    preflight = {"Origin": "https://ads.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in client().options("/v1/search", headers=preflight).headers
    r = client(cors_origins=["https://ads.example"]).options("/v1/search", headers=preflight)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://ads.example"


def test_an_unexpected_error_is_a_bare_json_500(monkeypatch, caplog):
    c = client()
    service = c.app.state.hlm

    async def broken(scope, body, receive):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(service, "search_bytes", broken)  # what the edge and the route both call
    r = c.post("/v1/search", json={"query": "drill"})
    assert r.status_code == 500 and error_of(r)["code"] == "internal_error"
    assert "secret" not in r.text
    assert "secret internals" in caplog.text  # the traceback stays in the server's log
    samples = c.get("/metrics").text
    assert 'hlm_request_duration_seconds_count{encoder="none",route="/v1/search",status="500"} 1.0' in samples


@pytest.mark.parametrize("path, status", [("/nope", 404), ("/v1/search", 405)])
def test_routing_errors_are_json(path, status):
    r = client().get(path)
    assert r.status_code == status and error_of(r)

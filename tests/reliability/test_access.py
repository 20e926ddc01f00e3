"""Access: admin routes off unless a token is configured, then need it; no path from a
request; bounded bodies, lists and queries; CORS closed unless configured.

In process, through the ASGI app without its lifespan (no artifact loaded): the edge
(auth, limits, CORS) answers before anything needs a model.
"""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from service.main import create_app
from service.settings import Settings

from .conftest import TOKEN


def call(settings: Settings, method: str, path: str, **kwargs) -> httpx.Response:
    async def main():
        transport = httpx.ASGITransport(app=create_app(settings))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(main())


def error_code(response: httpx.Response) -> str:
    assert response.headers["content-type"].startswith("application/json")
    return response.json()["error"]["code"]


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_admin_routes_do_not_exist_without_a_token(method):
    response = call(Settings(), method, "/admin/reload")
    assert response.status_code == 404 and error_code(response) == "not_found"
    assert "/admin/reload" not in create_app(Settings()).openapi()["paths"]


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Bearer {TOKEN}x", f"bearer {TOKEN}", TOKEN, f"Basic {TOKEN}"])
@pytest.mark.parametrize("method,path", [("POST", "/admin/reload"), ("GET", "/admin/reload"), ("GET", "/metrics"),
                                         ("GET", "/v1/info")])
def test_guarded_routes_need_the_exact_token(header, method, path):
    headers = {"Authorization": header} if header else {}
    response = call(Settings(admin_token=TOKEN), method, path, headers=headers)
    assert response.status_code == 401 and error_code(response) == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"
    assert TOKEN not in response.text


def test_the_right_token_passes():
    settings = Settings(admin_token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert call(settings, "GET", "/metrics", headers=auth).status_code == 200
    # No artifact loaded in this app: past the guard, the reload is refused, not unauthorised.
    response = call(settings, "POST", "/admin/reload", headers=auth)
    assert response.status_code == 409 and error_code(response) == "not_ready"


def test_reload_never_takes_a_path_from_the_request():
    settings = Settings(admin_token=TOKEN)
    response = call(settings, "POST", "/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"},
                    json={"artifact_dir": "/tmp/evil"})
    assert response.status_code == 422 and "takes no body" in response.json()["error"]["message"]
    # No route takes a parameter (but a keyword id and a model id, each held to a pattern without
    # '/', and the judgments' query, a search text), and no request body has a path, folder or
    # file field.
    schema = create_app(settings).openapi()
    for path, ops in schema["paths"].items():
        for op in ops.values():
            params = [p for p in op.get("parameters", [])
                      if not (p["name"] in ("keyword_id", "model")
                              and re.search(p["schema"].get("pattern", ""), "a/b") is None)
                      and not (path == "/v1/judgments" and p["name"] == "query")]
            assert not params, (path, op.get("parameters"))
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            for field in body.get("properties", {}):
                assert not any(word in field.lower() for word in ("path", "dir", "file", "folder")), (path, field)


def test_body_list_and_query_lengths_are_bounded():
    settings = Settings(max_body_bytes=1024, max_queries=3, max_query_chars=50)
    big = call(settings, "POST", "/v1/search", content=b"x" * 2048, headers={"content-type": "application/json"})
    assert big.status_code == 413 and error_code(big) == "body_too_large"
    many = call(settings, "POST", "/v1/search", json={"queries": ["a"] * 4})
    assert many.status_code == 422 and "at most 3 queries" in many.text
    long = call(settings, "POST", "/v1/search", json={"query": "a" * 51})
    assert long.status_code == 422 and "more than the limit of 50" in long.text


def test_default_bounds_take_a_10k_character_query():
    settings = Settings()
    assert settings.max_query_chars >= 10_000
    # Valid: it gets past validation (503 here only because no artifact is loaded).
    assert call(settings, "POST", "/v1/search", json={"query": "drill " * 1700}).status_code == 503
    assert call(settings, "POST", "/v1/search", json={"query": "a" * (settings.max_query_chars + 1)}).status_code == 422


def test_cors_is_closed_by_default():
    origin = {"Origin": "https://evil.example"}
    simple = call(Settings(), "GET", "/healthz", headers=origin)
    assert "access-control-allow-origin" not in simple.headers
    preflight = call(Settings(), "OPTIONS", "/v1/search",
                     headers=origin | {"Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers


def test_cors_opens_only_to_configured_origins():
    settings = Settings(cors_origins="https://ads.example")
    ok = call(settings, "OPTIONS", "/v1/search",
              headers={"Origin": "https://ads.example", "Access-Control-Request-Method": "POST"})
    assert ok.headers.get("access-control-allow-origin") == "https://ads.example"
    other = call(settings, "GET", "/healthz", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers

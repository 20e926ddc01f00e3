"""Load shedding at the HTTP edge: a request its encoder would refuse is answered 429
before the framework sees it; anything else reaches the app with its body intact.

The middleware is driven with hand-made ASGI messages around a recording app, with real
batchers (held busy at a gate, so their queue is full) and real metrics.
"""

from __future__ import annotations

import asyncio
import json
import threading
from types import SimpleNamespace

import pytest

from http_helpers import asgi_call as call, request_chunk as body

from service.batcher import Batcher
from service.metrics import Metrics
from service.middleware import EdgeMiddleware
from service.serving import AppState, Phase


class InnerApp:
    """The app behind the edge: records the bodies it was handed and answers 200."""

    def __init__(self):
        self.bodies: list[bytes] = []

    async def __call__(self, scope, receive, send):
        message = await receive()
        self.bodies.append(message["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


class WholeBodyApp(InnerApp):
    """Reads the body to its end, as a route does."""

    async def __call__(self, scope, receive, send):
        data = b""
        while True:
            message = await receive()
            data += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(data)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def held_batcher(name: str, metrics: Metrics, gate: threading.Event, entered: threading.Event) -> Batcher:
    def fn(jobs):
        entered.set()
        gate.wait(10)
        return [None for _ in jobs]

    return Batcher(name, fn, max_batch=1, queue_size=1, metrics=metrics)


async def post(app, path: str, body: bytes):
    scope = {"type": "http", "method": "POST", "path": path, "headers": [(b"content-type", b"application/json")]}
    chunks = [{"type": "http.request", "body": body[:3], "more_body": True},
              {"type": "http.request", "body": body[3:], "more_body": False}]

    async def receive():
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    sent = []

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])


def test_a_request_its_encoder_would_refuse_is_shed_at_the_edge_and_others_pass():
    async def main():
        metrics, state, inner = Metrics(), AppState(), InnerApp()
        gate, entered = threading.Event(), threading.Event()
        student = held_batcher("student", metrics, gate, entered)
        teacher = held_batcher("teacher", metrics, gate, entered)
        loop = asyncio.get_running_loop()
        student.start(loop)
        teacher.start(loop)
        state.runtime = SimpleNamespace(slots={"student": SimpleNamespace(batcher=student, limit=None, inline=False),
                                               "teacher": SimpleNamespace(batcher=teacher, limit=None, inline=False)},
                                        manifest={"encoders": {"student": {"model": "tiny-student"},
                                                               "teacher": {"model": "big-teacher"}}})
        edge = EdgeMiddleware(inner, metrics=metrics, state=state, max_body_bytes=1000,
                              known_paths={"/v1/search", "/v1/embed", "/v1/embeddings"})

        # Not ready yet: the edge does not judge, the app answers (503 there).
        state.phase = Phase.LOADING
        assert (await post(edge, "/v1/search", b'{"query": "drill"}'))[0] == 200
        state.phase = Phase.READY

        busy = student.submit("running")  # held in the worker
        await asyncio.to_thread(entered.wait, 10)
        queued = student.submit("queued")  # fills the queue of one
        shed = await post(edge, "/v1/search", b'{"query": "drill"}')  # default encoder: student
        shed_embed = await post(edge, "/v1/embed", b'{"queries": ["drill"], "encoder": "student"}')
        shed_openai = await post(edge, "/v1/embeddings", b'{"input": ["drill"], "model": "student"}')
        shed_openai_name = await post(edge, "/v1/embeddings", b'{"input": "drill", "model": "tiny-student"}')
        openai_teacher = await post(edge, "/v1/embeddings", b'{"input": "drill", "model": "teacher"}')
        openai_unknown = await post(edge, "/v1/embeddings", b'{"input": "drill", "model": "gpt-4"}')
        to_teacher = await post(edge, "/v1/search", b'{"query": "drill", "encoder": "teacher"}')
        not_json = await post(edge, "/v1/search", b'{"query": ')
        unknown = await post(edge, "/v1/search", b'{"query": "drill", "encoder": "giant"}')
        gate.set()
        await asyncio.gather(busy, queued)
        await student.close()
        await teacher.close()
        return metrics, inner, shed, shed_embed, shed_openai, shed_openai_name, openai_teacher, openai_unknown, \
            to_teacher, not_json, unknown

    (metrics, inner, shed, shed_embed, shed_openai, shed_openai_name, openai_teacher, openai_unknown,
     to_teacher, not_json, unknown) = asyncio.run(asyncio.wait_for(main(), 20))
    for status, headers, body in (shed, shed_embed, shed_openai, shed_openai_name):
        assert status == 429 and headers["retry-after"] == "1", (status, headers)
        error = json.loads(body)["error"]
        assert error["code"] == "queue_full" and "queue is full" in error["message"]
    # The teacher had room; bad JSON and unknown encoders are for the route to explain.
    assert [r[0] for r in (to_teacher, not_json, unknown, openai_teacher, openai_unknown)] == [200] * 5
    assert inner.bodies == [b'{"query": "drill"}', b'{"input": "drill", "model": "teacher"}',
                            b'{"input": "drill", "model": "gpt-4"}', b'{"query": "drill", "encoder": "teacher"}',
                            b'{"query": ', b'{"query": "drill", "encoder": "giant"}']

    def sample(name, **labels):
        return metrics.registry.get_sample_value(name, labels) or 0.0

    assert sample("hlm_rejected_total", encoder="student", reason="queue_full") == 4
    assert sample("hlm_request_duration_seconds_count", route="/v1/search", encoder="student", status="429") == 1
    assert sample("hlm_request_duration_seconds_count", route="/v1/embed", encoder="student", status="429") == 1
    assert sample("hlm_request_duration_seconds_count", route="/v1/embeddings", encoder="student", status="429") == 2


def test_a_body_over_the_limit_without_a_length_is_refused_at_the_edge():
    metrics, state, inner = Metrics(), AppState(), InnerApp()
    edge = EdgeMiddleware(inner, metrics=metrics, state=state, max_body_bytes=10, known_paths={"/v1/search"})
    status, _, body = asyncio.run(post(edge, "/v1/search", b'{"query": "a much longer query"}'))
    assert status == 413 and json.loads(body)["error"]["code"] == "body_too_large"
    assert inner.bodies == []


def test_the_edge_refuses_wrong_media_types_encodings_slashes_and_docs_before_the_app():
    metrics, state, inner = Metrics(), AppState(), InnerApp()
    edge = EdgeMiddleware(inner, metrics=metrics, state=state, max_body_bytes=1000, known_paths={"/v1/search"})
    json_body = [body(b'{"query": "drill"}')]
    n = str(len(json_body[0]["body"])).encode()

    async def main():
        return [
            await call(edge, "POST", "/v1/search", [(b"content-length", n), (b"content-type", b"text/plain")], json_body),
            await call(edge, "POST", "/v1/search", [(b"content-length", n)], json_body),
            await call(edge, "POST", "/v1/search", [(b"content-length", n), (b"content-type", b"application/json"),
                                                    (b"content-encoding", b"deflate, br")], json_body),
            await call(edge, "GET", "/healthz/", [(b"host", b"evil.example")], []),
            await call(edge, "GET", "/docs", [], []),
            await call(edge, "POST", "/v1/search", [(b"content-length", n),
                                                    (b"content-type", b"Application/JSON; charset=utf-8")], json_body),
            await call(edge, "POST", "/admin/reload", [], [body(b"")]),  # no body: no media type needed
        ]

    wrong_type, no_type, encoded, slash, docs, ok, reload = asyncio.run(main())
    assert wrong_type[0] == no_type[0] == encoded[0] == 415
    assert "application/json" in json.loads(wrong_type[2])["error"]["message"]
    assert "Content-Encoding" in json.loads(encoded[2])["error"]["message"]
    assert slash[0] == 404 and "location" not in slash[1] and b"evil" not in slash[2]
    assert docs[0] == 404 and b"/openapi.json" in docs[2]
    assert ok[0] == 200 and reload[0] == 200
    assert inner.bodies == [b'{"query": "drill"}', b""]  # only the last two reached the app


def test_a_body_that_does_not_arrive_in_time_gets_408_and_closes_the_connection():
    metrics, state, inner = Metrics(), AppState(), InnerApp()
    settings = SimpleNamespace(body_timeout_s=0.05, client_id_header=None, refusal_hold_ms=0.0, max_queries=64)
    inner = WholeBodyApp()
    edge = EdgeMiddleware(inner, metrics=metrics, state=state, max_body_bytes=1000,
                          known_paths={"/v1/search", "/v1/other"}, settings=settings)
    head = [(b"content-length", b"100"), (b"content-type", b"application/json")]

    async def main():
        return (await call(edge, "POST", "/v1/search", head, [body(b'{"que', True), None]),
                await call(edge, "POST", "/v1/other", head, [body(b'{"que', True), None]))

    shed_path, app_path = asyncio.run(main())
    for status, headers, data in (shed_path, app_path):
        assert status == 408 and headers["connection"] == "close"
        assert json.loads(data)["error"]["code"] == "body_timeout"
    assert inner.bodies == []


def test_the_loop_gate_refuses_only_when_the_admitted_work_exceeds_the_budget_and_the_client_has_more():
    from service.loopgate import LoopGate

    gate = LoopGate(budget_s=0.005, hold_max_s=0.016)
    gate.observe(0.002, 0.0)  # an inline search takes 2 ms on the loop
    gate.arrived("a")
    assert gate.admit("a") is None and gate.admit("a") is None and gate.admit("a") is None  # 0, 2, 4 ms ahead
    assert gate.admit("a") is None  # 6 ms ahead, but its client has nothing else waiting: never the cause
    gate.arrived("a")
    assert gate.admit("a") == pytest.approx(0.008)  # 8 ms ahead and another of its own waiting: refused
    assert gate.inline_pending == 4  # the refused one was not counted in
    assert gate.admit("b") is None  # another client, nothing else waiting
    for inline in (True, True, True, True, True, False):
        gate.answered("a" if inline else "b", inline)
    assert gate.inline_pending == 0 and gate.pending == {}
    assert [gate.hold_s(n) for n in (1, 2, 3, 4, 5, 6, 9)] == [0.001, 0.002, 0.004, 0.008, 0.016, 0.016, 0.016]
    assert LoopGate(budget_s=0.005, hold_max_s=0.0).hold_s(3) == 0.0

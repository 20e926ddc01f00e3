"""A client that leaves is not a server error (issue #28 C).

A client that closed mid-body on /admin/keywords or /admin/reload was logged as `ERROR
unhandled error` with a ClientDisconnect traceback and counted as a 500; a pipelining client
that closed without reading its answers made the running request write to the closed
transport (uvicorn marks only its newest request disconnected): a `TCPTransport closed`
traceback, a 500 on /openapi.json and "ASGI callable returned without completing response".
Now each is counted 499 with nothing in the log, in process (the edge) and on a real server
(the edge and server.py's protocol, which marks every unanswered request of the connection).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import pytest

from service.main import create_app
from service.settings import Settings

from .conftest import TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def counts(srv, route: str) -> dict[str, float]:
    """status -> hlm_request_duration_seconds_count for one route."""
    out = {}
    for line in srv.client.get("/metrics", headers=AUTH).text.splitlines():
        if line.startswith("hlm_request_duration_seconds_count{") and f'route="{route}"' in line:
            status = line.split('status="')[1].split('"')[0]
            out[status] = out.get(status, 0.0) + float(line.split()[-1])
    return out


def wait_for(predicate, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.1)
    return value


@pytest.mark.parametrize("path", ["/admin/keywords", "/admin/reload"])
def test_a_body_cut_short_in_process_is_a_quiet_499(path, caplog):
    app = create_app(Settings(admin_token=TOKEN))
    statuses = []
    app.state.hlm.metrics.request_duration.labels(path, "none", "499")  # the series the edge writes

    async def main():
        scope = {"type": "http", "method": "POST", "path": path, "client": ("10.0.0.7", 5000), "query_string": b"",
                 "http_version": "1.1", "scheme": "http", "server": ("test", 80), "root_path": "",
                 "headers": [(b"authorization", f"Bearer {TOKEN}".encode()), (b"content-type", b"application/json"),
                             (b"content-length", b"1000")]}
        messages = [{"type": "http.request", "body": b'{"upsert": [', "more_body": True}, {"type": "http.disconnect"}]

        async def receive():
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await app(scope, receive, send)

    with caplog.at_level(logging.DEBUG, logger="service"):
        asyncio.run(main())
    assert 500 not in statuses  # nobody to answer: at most a 499 into the closed channel
    samples = {s.labels["status"]: s.value for family in app.state.hlm.metrics.request_duration.collect()
               for s in family.samples if s.name.endswith("_count") and s.labels["route"] == path}
    assert samples.get("499") == 1 and "500" not in samples, samples
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


@pytest.fixture(scope="module")
def srv(start_server):
    server = start_server(admin_token=TOKEN, shadow_rate=0)
    server.wait_for("/readyz")
    return server


@pytest.mark.parametrize("path", ["/admin/keywords", "/admin/reload"])
def test_a_client_that_leaves_mid_body_is_a_499_without_a_traceback(srv, path):
    before = counts(srv, path)
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"upsert\": [".encode())
    wait_for(lambda: counts(srv, path).get("499", 0) > before.get("499", 0), f"a 499 counted on {path}")
    assert counts(srv, path).get("500", 0) == before.get("500", 0)
    log = srv.log()
    assert "Traceback" not in log and "ClientDisconnect" not in log and "ERROR" not in log, log[-3000:]


def test_a_pipelining_client_that_closes_without_reading_is_a_499_without_a_traceback(srv):
    route = "/openapi.json"
    before = counts(srv, route)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # it reads nothing: the server's writes stall
    sock.connect(("127.0.0.1", srv.port))
    sock.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: t\r\n\r\n" * 3000)  # ~90 MB of answers asked for
    # Wait until the server answers, then until its writes stall on the full buffers (the count
    # stops moving), so the connection closes under a running answer with more queued behind it.
    wait_for(lambda: counts(srv, route).get("200", 0) > before.get("200", 0), "a first answer")
    last, still = -1.0, 0
    while still < 5:
        now = counts(srv, route).get("200", 0)
        still, last = (still + 1, now) if now == last else (0, now)
        time.sleep(0.2)
    sock.close()
    wait_for(lambda: counts(srv, route).get("499", 0) > before.get("499", 0), "the running answer counted 499")
    after = counts(srv, route)
    assert after.get("500", 0) == before.get("500", 0), after
    log = srv.log()
    for text in ("Traceback", "handler is closed", "returned without completing", "ERROR"):
        assert text not in log, log[-3000:]
    # and the server goes on answering
    assert srv.client.get("/readyz").status_code == 200

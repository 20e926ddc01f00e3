"""Helpers shared by the service tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
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
    return parse_metrics(response.text)


def parse_metrics(text: str) -> dict:
    """A Prometheus exposition as {(sample name, frozenset(labels)): value}."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`python -m hlm.cli serve` in a subprocess, its log in a file."""

    def __init__(self, artifact: Path, log_path: Path, **settings):
        self.artifact = Path(artifact)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith("HLM_")}
        env["PYTHONUNBUFFERED"] = "1"
        env.update({f"HLM_{key.upper()}": str(value) for key, value in settings.items()})
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hlm.cli", "serve", "--artifact", str(artifact), "--port", str(self.port)],
            cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for(self, path: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.client.get(path, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        pytest.fail(f"{path} did not answer 200 within {timeout} s:\n{self.log()}")

    def stop(self, timeout: float = 30.0) -> int:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def start_server(small_artifact, tmp_path_factory):
    """Factory: start_server(artifact=None, **settings) -> Server; all stopped at the end."""
    servers = []

    def start(artifact: Path | None = None, **settings) -> Server:
        log_path = tmp_path_factory.mktemp("server") / "server.log"
        server = Server(artifact or small_artifact, log_path, **settings)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


async def asgi_call(app, method: str, path: str, headers: list, chunks: list, settings=None, client=("10.0.0.1", 5000)):
    """Drive an ASGI app (the edge) with hand-made messages from the connection ``client``: its
    (status, headers, body). A chunk None never arrives (a stalled, still connected client)."""
    scope = {"type": "http", "method": method, "path": path, "headers": headers, "client": client}
    pending = list(chunks)

    async def receive():
        if pending:
            chunk = pending.pop(0)
            if chunk is None:
                await asyncio.Event().wait()  # never
            return chunk
        return {"type": "http.disconnect"}

    sent = []

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, \
        b"".join(m.get("body", b"") for m in sent[1:])


def request_chunk(data: bytes, more: bool = False) -> dict:
    """One ``http.request`` message of a body."""
    return {"type": "http.request", "body": data, "more_body": more}

"""Peer 2: a dedicated embedding server (infinity-emb) plus the index, as two hops.

    client -> front (FastAPI, this file) -> infinity-emb /embeddings over loopback HTTP
                                         -> hnswlib (same index) -> answer

infinity-emb runs in its own virtual environment (``.venv-peers``: it pins
sentence-transformers 3.x / transformers 4.x, which this project's venv does not have),
on its torch engine, fp32, serving the artifact's student from a local
sentence-transformers folder written by ``st_student.save_st_student``. Its own
micro-batching (``--batch-size 32``) is on, as shipped. Switched off: ``torch.compile``
(minutes of CPU to compile on this 2-core box), BetterTransformer (needs optimum), the
SQLite vector cache (it would answer repeated queries from disk) and the per-request
access log; telemetry off, hub offline.

The front keeps one aiohttp session to infinity (keep-alive), so the hop costs one
loopback round trip and a JSON encode/decode of a 768-float vector.

    python -m benchmarks.peers serve --peer infinity --artifact artifacts/demo --port 8002
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Sequence

import numpy as np
from fastapi import FastAPI, HTTPException

from loadtest.cpus import stop_process
from benchmarks.peers.common import PeerIndex, SearchIn, search_response, set_offline_env

REPO = Path(__file__).resolve().parents[2]
DEFAULT_PEERS_VENV = REPO / ".venv-peers"
SERVED_NAME = "student"


def infinity_binary(venv: Path | str | None = None) -> Path:
    venv = Path(venv or os.environ.get("HLM_PEERS_VENV") or DEFAULT_PEERS_VENV)
    exe = venv / "bin" / "infinity_emb"
    if not exe.is_file():
        raise FileNotFoundError(
            f"{exe} not found: install infinity-emb into a separate venv, e.g. `python3 -m venv {venv} && "
            f"{venv}/bin/pip install 'infinity-emb[server,torch]==0.0.78' torch==2.13.0`")
    return exe


def infinity_command(model_dir: Path | str, port: int, venv: Path | str | None = None,
                     batch_size: int = 32) -> list[str]:
    return [str(infinity_binary(venv)), "v2", "--model-id", str(model_dir), "--served-model-name", SERVED_NAME,
            "--engine", "torch", "--device", "cpu", "--dtype", "float32", "--batch-size", str(batch_size),
            "--no-compile", "--no-bettertransformer", "--no-vector-disk-cache",
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]


def _die_with_parent() -> None:
    """Child side of Popen: get SIGTERM if the front dies, whatever way it dies (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def start_infinity(model_dir: Path | str, port: int, log_path: Path | str | None = None,
                   venv: Path | str | None = None, ready_timeout_s: float = 180.0) -> subprocess.Popen:
    """Start infinity-emb (inheriting this process's CPU affinity) and wait for /health."""
    import httpx

    env = dict(os.environ)
    for name, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("DO_NOT_TRACK", "1"),
                        ("INFINITY_ANONYMOUS_USAGE_STATS", "0"), ("HF_HUB_DISABLE_TELEMETRY", "1")):
        env[name] = value
    env.pop("VIRTUAL_ENV", None)
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(infinity_command(model_dir, port, venv), env=env, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=_die_with_parent)
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"infinity-emb exited with code {proc.returncode} before it was ready (log: {log_path})")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2.0).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_process(proc)
    raise TimeoutError(f"infinity-emb not ready after {ready_timeout_s:.0f} s (log: {log_path})")


def create_front(embed_url: str, index: PeerIndex, model: str = SERVED_NAME) -> FastAPI:
    """The thin front: embed over HTTP, then search the index in the route."""
    import aiohttp

    state: dict = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
        try:
            yield
        finally:
            await state["session"].close()

    app = FastAPI(title="peer: infinity-emb + hnswlib (two hops)", lifespan=lifespan)

    async def embed(texts: Sequence[str]) -> np.ndarray:
        async with state["session"].post(embed_url, json={"model": model, "input": list(texts)}) as resp:
            if resp.status != 200:
                raise HTTPException(502, f"embedding server answered {resp.status}")
            body = await resp.json()
        return np.asarray([row["embedding"] for row in body["data"]], dtype=np.float32)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> dict:
        return {"status": "ready"}

    @app.post("/v1/search")
    async def search(req: SearchIn) -> dict:
        vector = (await embed([req.query]))[0]
        return search_response(req.query, index.search(vector, req.k), req.k)

    return app


def serve(artifact: Path | str, port: int, host: str = "127.0.0.1", model_dir: Path | str | None = None,
          infinity_port: int | None = None, log_dir: Path | str | None = None) -> None:
    """Export the student folder if needed, start infinity, serve the front until SIGTERM."""
    import uvicorn

    from loadtest.cpus import free_port
    from benchmarks.peers.st_student import save_st_student

    set_offline_env()
    artifact = Path(artifact)
    if not model_dir:  # one folder per artifact content: a rebuilt artifact gets a fresh export
        from artifact.manifest import verify

        digest = verify(artifact, checksums=False)["artifact_sha256"][:12]
        model_dir = REPO / "runs" / "bench" / "peers" / f"student-st-{artifact.name}-{digest}"
    model_dir = Path(model_dir)
    if not (model_dir / "modules.json").is_file():
        tmp = model_dir.with_name(model_dir.name + f".tmp-{os.getpid()}")
        save_st_student(artifact, tmp)
        shutil.rmtree(model_dir, ignore_errors=True)
        os.replace(tmp, model_dir)
    infinity_port = infinity_port or free_port()
    log_dir = Path(log_dir) if log_dir else model_dir.parent
    proc = start_infinity(model_dir, infinity_port, log_path=log_dir / f"infinity-{port}.log")
    try:
        app = create_front(f"http://127.0.0.1:{infinity_port}/embeddings", PeerIndex.from_artifact(artifact))
        print(f"infinity-emb on 127.0.0.1:{infinity_port} (pid {proc.pid}); front on {host}:{port}", file=sys.stderr,
              flush=True)
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        stop_process(proc)

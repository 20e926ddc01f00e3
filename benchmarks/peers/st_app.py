"""Peer 1: the service a user would write first.

sentence-transformers (PyTorch) in a FastAPI route, then the same hnswlib index::

    @app.post("/v1/search")
    def search(req: SearchIn):
        vector = model.encode([req.query])[0]
        return {"results": [{"keywords": index.search(vector, req.k)}]}

A plain ``def`` route, so FastAPI runs each request in its thread pool (concurrent
requests call ``model.encode`` side by side); torch's own thread count left at its
default; uvicorn with its defaults. No micro-batching, no ONNX, no int8, no metrics.

    python -m benchmarks.peers.st_app --artifact artifacts/demo --port 8001
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from fastapi import FastAPI

from benchmarks.peers.common import PeerIndex, SearchIn, search_response, set_offline_env

log = logging.getLogger("hlm.peers.st")

Encode = Callable[[Sequence[str]], np.ndarray]


def create_app(encode: Encode, index: PeerIndex) -> FastAPI:
    """The peer app around any ``encode(texts) -> [n, dim] float32`` (tests pass a fake one)."""
    app = FastAPI(title="peer: sentence-transformers + hnswlib")

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> dict:
        return {"status": "ready"}

    @app.post("/v1/search")
    def search(req: SearchIn) -> dict:
        vector = encode([req.query])[0]
        return search_response(req.query, index.search(vector, req.k), req.k)

    return app


def st_encoder(artifact: Path | str) -> Encode:
    from benchmarks.peers.st_student import build_st_student

    model = build_st_student(artifact)

    def encode(texts: Sequence[str]) -> np.ndarray:
        return model.encode(list(texts), convert_to_numpy=True, normalize_embeddings=False, show_progress_bar=False)

    encode(["warm up"])
    return encode


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artifact", type=Path, default=Path("artifacts/demo"))
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    args = ap.parse_args(argv)
    set_offline_env()
    import torch
    import uvicorn

    logging.basicConfig(level=logging.INFO)
    app = create_app(st_encoder(args.artifact), PeerIndex.from_artifact(args.artifact))
    log.info("sentence-transformers peer ready: torch %s, %d intra-op threads", torch.__version__, torch.get_num_threads())
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()

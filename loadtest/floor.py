"""The floor: a bare ASGI app that does only the product's work for ``POST /v1/search``.

What a request costs here is what any server must pay for one search on this artifact:
parse the JSON body, tokenise the query, run the artifact's student in ONNX Runtime, search
the artifact's hnswlib graph at its ef, serialise the hits with orjson. No validation beyond
that, no admission, no batching, no metrics, no framework. ``hlm serve`` is measured against
it (issue #29: within 10 % of its served rate), under the same uvicorn (httptools + uvloop,
one process), driven by the same ``wrk`` script (loadtest/wrk/sweep.sh ``FLOOR=1``).

    python -m loadtest floor --artifact artifacts/demo --port 8100

It reads the artifact directly (libraries used as a user would: onnxruntime, tokenizers,
hnswlib), not through the service's classes, so the service gets no credit for them.
Single queries only (``{"query": ..., "k": ...}``), the student only: the shape of the
benchmark's bodies. GET /readyz answers 200 once loaded, so the sweep scripts can wait on it.
"""

from __future__ import annotations

import json
from pathlib import Path

import hnswlib
import numpy as np
import onnxruntime as ort
import orjson

from artifact.manifest import verify
from artifact.store import read_store
from retrieval.onnx_encoder import load_tokenizer

JSON_HEADERS = [(b"content-type", b"application/json")]


def floor_app(artifact: Path):
    """The bare ASGI callable over ``artifact`` (loaded now, before it is returned)."""
    artifact = Path(artifact)
    manifest = verify(artifact, checksums=False)
    student = manifest["encoders"]["student"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(artifact / student["onnx"]), options, providers=["CPUExecutionProvider"])
    tokenizer = load_tokenizer(artifact / student["tokenizer"], int(student.get("max_length") or 128))
    index = manifest["index"]
    ids, texts = read_store(artifact / index["store"])
    graph = hnswlib.Index(space="ip", dim=int(index["dim"]))
    graph.load_index(str(artifact / index["path"]), max_elements=len(ids))
    graph.set_num_threads(1)
    ef = int(index.get("ef") or 64)
    graph.set_ef(ef)

    def search(query: str, k: int) -> bytes:
        encoding = tokenizer.encode(query)
        input_ids = np.array([encoding.ids], dtype=np.int64)
        (vector,) = session.run(["embedding"], {"input_ids": input_ids, "attention_mask": np.ones_like(input_ids)})
        labels, distances = graph.knn_query(vector, k=min(k, len(ids)))
        hits = [{"id": ids[label], "text": texts[label], "score": 1.0 - distance}
                for label, distance in zip(labels[0].tolist(), distances[0].tolist())]
        return orjson.dumps({"results": [{"query": query, "keywords": hits}]})

    search("warm up", 10)

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        if scope["method"] == "POST" and scope["path"] == "/v1/search":
            chunks = []
            while True:
                message = await receive()
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    break
            data = orjson.loads(b"".join(chunks))
            status, body = 200, search(data["query"], int(data.get("k") or 10))
        elif scope["path"] == "/readyz":
            status, body = 200, b'{"ready": true}'
        else:
            status, body = 404, json.dumps({"error": "not found"}).encode()
        await send({"type": "http.response.start", "status": status, "headers": JSON_HEADERS})
        await send({"type": "http.response.body", "body": body})

    return app


def serve_floor(artifact: Path, host: str = "127.0.0.1", port: int = 8100) -> None:
    import uvicorn

    uvicorn.run(floor_app(artifact), host=host, port=port, http="httptools", loop="uvloop", workers=1,
                access_log=False, log_level="warning", server_header=False)

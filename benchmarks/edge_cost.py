"""The product's ASGI app against the floor's, in one process, without HTTP (issue #29).

Both apps get the same hand-made ASGI messages for the same search bodies, one request at a
time, rounds taking turns; what is timed is everything above uvicorn: the product's edge,
validation, search and response against the floor's bare handler (loadtest/floor.py). The
scope carries what the product's HTTP protocol would add (arrival, client), so the loop gate
is on its normal path.

    python -m benchmarks.edge_cost --artifact artifacts/demo [--n 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path


def scope_for(body: bytes, product: bool) -> dict:
    scope = {"type": "http", "method": "POST", "path": "/v1/search", "client": ("127.0.0.1", 5000),
             "headers": [(b"host", b"x"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())],
             "query_string": b"", "root_path": "", "scheme": "http", "server": ("127.0.0.1", 8000),
             "http_version": "1.1", "raw_path": b"/v1/search"}
    if product:  # what service/server.py's protocol puts in the scope
        scope.update({"hlm.arrived": time.monotonic(), "hlm.client": "127.0.0.1", "hlm.body_deadline": True})
    return scope


async def drive(app, bodies: list[bytes], n: int, product: bool) -> float:
    """Microseconds per request over ``n`` requests."""
    async def send(message):
        pass

    t0 = time.perf_counter()
    for i in range(n):
        body = bodies[i % len(bodies)]
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            return messages.pop() if messages else {"type": "http.disconnect"}

        await app(scope_for(body, product), receive, send)
    return (time.perf_counter() - t0) / n * 1e6


async def start(app) -> None:
    """Run the app's lifespan start-up and wait until it is ready."""
    queue: asyncio.Queue = asyncio.Queue()
    await queue.put({"type": "lifespan.startup"})

    async def send(message):
        pass

    asyncio.get_running_loop().create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                                                queue.get, send))
    while app.state.hlm.state.phase.value != "ready":
        await asyncio.sleep(0.2)


async def main_async(artifact: Path, n: int, rounds: int, bodies_file: Path | None) -> dict:
    from loadtest.floor import floor_app
    from loadtest.queries import load_queries
    from service.main import create_app
    from service.settings import Settings

    texts = load_queries(None)[:500] if bodies_file is None else [json.loads(l)["query"] for l in open(bodies_file)]
    bodies = [json.dumps({"query": t, "k": 10}).encode() for t in texts]
    product = create_app(Settings(artifact_dir=artifact))
    await start(product)
    floor = floor_app(artifact)
    rows: dict[str, list[float]] = {"floor": [], "product": []}
    for _ in range(rounds):
        rows["floor"].append(await drive(floor, bodies, n, False))
        rows["product"].append(await drive(product, bodies, n, True))
    out = {name: {"us_per_request": round(statistics.median(v), 1), "rounds": [round(x) for x in v]}
           for name, v in rows.items()}
    out["ratio"] = round(out["product"]["us_per_request"] / out["floor"]["us_per_request"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artifact", type=Path, required=True)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--bodies", type=Path, help="a wrk bodies file (loadtest/wrk/bodies.py); default: sample queries")
    args = ap.parse_args(argv)
    print(json.dumps(asyncio.run(main_async(args.artifact, args.n, args.rounds, args.bodies)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

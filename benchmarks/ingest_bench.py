"""Live keyword ingest: query p99 with and without ingest, and the ingest rate, in one run.

Starts ``hlm serve`` on 127.0.0.1 with a fresh state folder (``HLM_STATE_DIR``), then runs
two phases of ``--seconds`` each, alternating ``--rounds`` times, the same open-loop query load (``--rate`` student queries
a second, k = 10, a pool of the artifact's own keyword texts shuffled) in both:

1. queries alone;
2. queries while one closed-loop client upserts new keywords, ``--batch`` a request (each
   answered only once logged with fsync and visible), deleting an earlier one per request.

Reported per phase: queries sent/answered/errors, client-side p50/p99 and the server's own
p99 (``timings.total_ms``); for phase 2 the ingest rate (acknowledged keywords a second)
and the teacher's encode time per change from ``hlm_ingest_encode_seconds``.

    .venv/bin/python -m benchmarks.ingest_bench /work/small-artifact --seconds 20 --rate 50

``--isolate`` measures in process instead, without HTTP, the event loop or other clients, what
each half of ingest costs a stream of student queries (encode + search, ``--rate`` a second):
graph writes alone (a pre-encoded 16-keyword change every 0.5 s through ``HnswIndex.apply``, one
graph and double-buffered),
and teacher encoding alone in a thread at niceness 10 and at 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

TOKEN = "ingest-bench"


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


async def queries(client: httpx.AsyncClient, pool: list[str], rate: float, seconds: float, out: dict) -> None:
    """Open loop: one query every 1/rate s whatever the answers do."""
    lat, server, errors, tasks = [], [], 0, []

    async def one(text: str) -> None:
        nonlocal errors
        t0 = time.perf_counter()
        try:
            r = await client.post("/v1/search", json={"query": text, "k": 10})
        except httpx.HTTPError:
            errors += 1
            return
        if r.status_code != 200:
            errors += 1
            return
        lat.append((time.perf_counter() - t0) * 1000)
        server.append(r.json()["timings"]["total_ms"])

    start = time.perf_counter()
    n = 0
    while (due := start + n / rate) < start + seconds:
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.ensure_future(one(pool[n % len(pool)])))
        n += 1
    await asyncio.gather(*tasks)
    out["sent"] = out.get("sent", 0) + n
    out["errors"] = out.get("errors", 0) + errors
    out.setdefault("_lat", []).extend(lat)
    out.setdefault("_server", []).extend(server)


def summarise(raw: dict) -> dict:
    lat, server = raw.pop("_lat"), raw.pop("_server")
    return raw | {"answered": len(lat), "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
                  "server_p50_ms": pct(server, 50), "server_p99_ms": pct(server, 99)}


async def ingest(client: httpx.AsyncClient, batch: int, seconds: float, out: dict) -> None:
    words = ("walnut", "cedar", "brass", "solar", "vinyl", "marble", "bamboo", "copper", "steel", "oak", "glass",
             "lantern", "faucet", "shelf", "fence", "heater", "drill", "hose", "tile", "blind", "mower", "sink")
    rng = random.Random(5)
    acked, requests, errors, n = 0, 0, 0, 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        items = [{"id": f"bench:{n}:{j}", "text": " ".join(rng.sample(words, 5)) + f" {n}-{j}",
                  "attributes": {"market": rng.choice(["en-US", "de-DE"]), "active": True}} for j in range(batch)]
        r = await client.post("/admin/keywords", json={"upsert": items, "delete": [f"bench:{n - 1}:0"] if n else []},
                              headers={"Authorization": f"Bearer {TOKEN}"})
        requests += 1
        if r.status_code == 200:
            acked += batch
        else:
            errors += 1
        n += 1
    elapsed = time.perf_counter() - start
    for key, add in (("requests", requests), ("keywords_acknowledged", acked), ("errors", errors),
                     ("seconds", elapsed)):
        out[key] = out.get(key, 0) + add
    out["keywords_per_s"] = round(out["keywords_acknowledged"] / out["seconds"], 1)
    out["seconds"] = round(out["seconds"], 2)


def histogram_mean(text: str, name: str) -> float | None:
    total = count = None
    for line in text.splitlines():
        if line.startswith(name + "_sum "):
            total = float(line.split()[1])
        elif line.startswith(name + "_count "):
            count = float(line.split()[1])
    return round(total / count * 1000, 1) if count else None


async def run(url: str, pool: list[str], args) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=64)) as client:
        for text in pool[:20]:  # warm the path
            await client.post("/v1/search", json={"query": text, "k": 10})
        alone: dict = {}
        during: dict = {}
        ingested: dict = {}
        for _ in range(args.rounds):  # alternating, so drift of a shared machine hits both alike
            await queries(client, pool, args.rate, args.seconds, alone)
            await asyncio.gather(queries(client, pool, args.rate, args.seconds, during),
                                 ingest(client, args.batch, args.seconds, ingested))
        m = (await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})).text
        ingested["encode_ms_per_change"] = histogram_mean(m, "hlm_ingest_encode_seconds")
    return {"queries_alone": summarise(alone), "queries_during_ingest": summarise(during), "ingest": ingested}


def isolate(artifact: Path, seconds: float, rate: float) -> dict:
    import threading

    from retrieval.base import SearchParams
    from retrieval.hnsw import HnswIndex
    from retrieval.onnx_encoder import OnnxEncoder
    from service.live.keywords import encode_texts, lower_this_threads_priority

    manifest = json.loads((artifact / "manifest.json").read_text())
    idx, enc = manifest["index"], manifest["encoders"]
    def open_index(double_buffer: bool) -> HnswIndex:
        return HnswIndex(artifact / idx["path"], artifact / idx["store"], int(idx["dim"]), int(idx.get("ef") or 64),
                         double_buffer=double_buffer)

    index = open_index(False)
    student_file = enc["student"].get("onnx_int8") or enc["student"]["onnx"]
    student = OnnxEncoder(artifact / student_file, artifact / enc["student"]["tokenizer"], 128, threads=1)
    teacher = OnnxEncoder(artifact / enc["teacher"]["onnx"], artifact / enc["teacher"]["tokenizer"], 128, threads=1)
    texts = [kw[1] for kw in index.keywords()[:2000]]

    def stream() -> dict:
        lat, t0, i = [], time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            start = time.perf_counter()
            index.search(student.encode([texts[i % len(texts)]]).vectors, SearchParams(10))
            lat.append((time.perf_counter() - start) * 1000)
            i += 1
            time.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
        return {"queries": len(lat), "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "max_ms": round(max(lat), 2)}

    def with_background(work) -> dict:
        stop = threading.Event()
        thread = threading.Thread(target=work, args=(stop,), daemon=True)
        thread.start()
        try:
            return stream()
        finally:
            stop.set()
            thread.join()

    fixed = index.vectors_of([kw[0] for kw in index.keywords()[:16]])

    def writes(stop) -> None:
        n = 0
        while not stop.is_set():
            index.apply([f"iso:{n - 1}:0"] if n else [], [f"iso:{n}:{j}" for j in range(16)], fixed, ["t"] * 16,
                        [{}] * 16)
            n += 1
            stop.wait(0.5)

    def encoding(niceness):
        def work(stop) -> None:
            lower_this_threads_priority(niceness)
            n = 0
            while not stop.is_set():
                encode_texts(teacher, texts[(n * 16) % 1984:(n * 16) % 1984 + 16])
                n += 1
        return work

    out = {"alone": stream(), "graph_writes_one_graph": with_background(writes)}
    index = open_index(True)
    out["graph_writes_double_buffer"] = with_background(writes)
    out["alone_again"] = stream()
    for niceness in (10, 0):
        out[f"teacher_encoding_niceness_{niceness}"] = with_background(encoding(niceness))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--seconds", type=float, default=20.0, help="Length of each phase.")
    parser.add_argument("--rate", type=float, default=50.0, help="Student queries a second (open loop).")
    parser.add_argument("--batch", type=int, default=16, help="Keywords per upsert request.")
    parser.add_argument("--rounds", type=int, default=2, help="Alternations of the two phases.")
    parser.add_argument("--niceness", type=int, default=10, help="HLM_INGEST_NICENESS of the server.")
    parser.add_argument("--port", type=int, default=8767)
    parser.add_argument("--out", type=Path, default=None, help="JSON results.")
    parser.add_argument("--isolate", action="store_true", help="In process: each half of ingest on its own.")
    args = parser.parse_args(argv)
    if args.isolate:
        result = isolate(args.artifact, args.seconds, args.rate)
        result["setup"] = {"artifact": str(args.artifact), "seconds": args.seconds, "rate": args.rate,
                           "load_average": os.getloadavg(), "host": platform.node(), "cpus": os.cpu_count()}
        print(json.dumps(result, indent=2))
        if args.out:
            args.out.write_text(json.dumps(result, indent=2) + "\n")
        return
    pool = [line.split("\t", 1)[1].strip() for line in
            (args.artifact / "index" / "keywords.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    random.Random(1).shuffle(pool)
    with tempfile.TemporaryDirectory(prefix="hlm-ingest-bench-") as state:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HLM_")}
        env.update(HLM_ADMIN_TOKEN=TOKEN, HLM_STATE_DIR=state, HLM_SHADOW_RATE="0",
                   HLM_INGEST_NICENESS=str(args.niceness))
        server = subprocess.Popen([sys.executable, "-m", "hlm.cli", "serve", "--artifact", str(args.artifact),
                                   "--host", "127.0.0.1", "--port", str(args.port)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{args.port}"
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                try:
                    if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None:
                    sys.exit(f"hlm serve exited with {server.returncode}")
                time.sleep(0.2)
            else:
                sys.exit("hlm serve did not get ready within 180 s")
            result = asyncio.run(run(url, pool, args))
        finally:
            server.terminate()
            server.wait(30)
    result["setup"] = {"artifact": str(args.artifact), "seconds": args.seconds, "rate": args.rate, "batch": args.batch,
                       "rounds": args.rounds, "niceness": args.niceness, "load_average": os.getloadavg(),
                       "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version()}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

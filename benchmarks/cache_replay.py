"""Head-query result cache on Zipfian traffic (issue #14): hit rate and throughput, off vs on.

Sponsored-search traffic is Zipfian: a few head queries make up much of it. This replays a
Zipf (s = 1) draw over a pool of dev-split queries (judged Home Depot dev queries and MS
MARCO dev queries, never trained on) from ``--clients`` closed-loop clients for
``--seconds`` against ``hlm serve`` started twice on the same artifact and cores, once with
``HLM_RESULT_CACHE_BYTES=0`` and once with the cache on, alternating ``--rounds`` times;
hit rate from the server's own ``hlm_result_cache_total`` counters.

    .venv/bin/python -m benchmarks.cache_replay artifacts/demo --server-cpus 0 --client-cpus 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from loadtest.cpus import launch_server


def dev_pool(size: int) -> list[str]:
    from models import data as data_mod
    from models.splits import split_of

    judged = [q for q in data_mod.load_sample_judgments().queries if split_of(q) == "dev"]
    web = [q for q in data_mod.load_sample("msmarco").texts if split_of(q) == "dev"]
    pool = [q for pair in zip(judged, web) for q in pair][:size]
    random.Random(0).shuffle(pool)  # rank in the Zipf draw is unrelated to the query's source
    return pool


def zipf_draw(pool: list[str], n: int, s: float = 1.0, seed: int = 0) -> list[str]:
    ranks = np.arange(1, len(pool) + 1, dtype=np.float64)
    p = ranks**-s
    p /= p.sum()
    rows = np.random.default_rng(seed).choice(len(pool), size=n, p=p)
    return [pool[i] for i in rows]


async def _clients(url: str, queries: list[str], clients: int, seconds: float) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    position = 0
    stop = time.perf_counter() + seconds

    async def client(session):
        nonlocal position, errors
        while time.perf_counter() < stop:
            query = queries[position % len(queries)]
            position += 1
            t0 = time.perf_counter()
            async with session.post(url + "/v1/search", json={"query": query, "k": 10}) as response:
                await response.read()
                if response.status != 200:
                    errors += 1
                    continue
            latencies.append(time.perf_counter() - t0)

    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    lat = np.array(latencies) * 1000
    return {"served_per_s": len(latencies) / elapsed, "errors": errors, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "requests": len(latencies)}


def _cache_counts(url: str) -> tuple[float, float]:
    import httpx

    text = httpx.get(url + "/metrics", timeout=5).text
    hits = misses = 0.0
    for line in text.splitlines():
        if line.startswith("hlm_result_cache_total{"):
            value = float(line.rsplit(" ", 1)[1])
            if 'result="hit"' in line:
                hits += value
            elif 'result="miss"' in line:
                misses += value
    return hits, misses


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--pool", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cache-bytes", type=int, default=64 * 1024 * 1024)
    parser.add_argument("--port", type=int, default=8791)
    parser.add_argument("--server-cpus", default=None)
    parser.add_argument("--client-cpus", default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.client_cpus:
        os.sched_setaffinity(0, {int(c) for c in args.client_cpus.split(",")})
    queries = zipf_draw(dev_pool(args.pool), 200_000)
    url = f"http://127.0.0.1:{args.port}"
    runs = {"off": [], "on": []}
    os.environ.pop("HLM_ADMIN_TOKEN", None)  # the counters are read from /metrics without a token
    cmd = [sys.executable, "-m", "hlm.cli", "serve", "--artifact", str(args.artifact), "--port", str(args.port)]
    cpus = [int(c) for c in args.server_cpus.split(",")] if args.server_cpus else None
    for _ in range(args.rounds):
        for mode in ("off", "on"):
            cache = str(args.cache_bytes if mode == "on" else 0)
            with launch_server(cmd, ready_url=url + "/readyz", cpus=cpus, env={"HLM_RESULT_CACHE_BYTES": cache}):
                asyncio.run(_clients(url, queries[:200], 2, 2.0))  # warm the connection pool and the encoders
                before = _cache_counts(url)
                row = asyncio.run(_clients(url, queries, args.clients, args.seconds))
                after = _cache_counts(url)
                hits, misses = after[0] - before[0], after[1] - before[1]
                row["hit_rate"] = hits / (hits + misses) if hits + misses else 0.0
                runs[mode].append(row)
    summary = {mode: {key: statistics.median(r[key] for r in rows) for key in rows[0]} for mode, rows in runs.items()}
    meta = {"machine": platform.node(), "processor": platform.processor(), "artifact": str(args.artifact),
            "pool": args.pool, "zipf_s": 1.0, "clients": args.clients, "seconds": args.seconds, "rounds": args.rounds}
    print(json.dumps(meta))
    print("| cache | served/s | p50 ms | p99 ms | hit rate | errors |")
    print("|---|---|---|---|---|---|")
    for mode, r in summary.items():
        print(f"| {mode} | {r['served_per_s']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['hit_rate']:.3f} | {r['errors']:.0f} |")
    print(f"throughput with the cache: {summary['on']['served_per_s'] / summary['off']['served_per_s']:.2f}x without")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "runs": runs, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()

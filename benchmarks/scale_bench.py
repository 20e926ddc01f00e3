"""The two keyword indexes side by side at the artifact's size and at synthetic 1M / 10M (issue #24).

Per size and index: recall@10 against exact search, microseconds per query (one thread,
batch 1, the efs and indexes taking turns round by round: the median round's mean, and p50 /
p99 over every query of every round), RAM and disk per keyword,
build time. hnswlib is the artifact's graph (full vectors + links in RAM); "compressed" is
``retrieval.compressed`` (faiss IVF + 4-bit PQ codes in RAM, float32 or float16 vectors
memory-mapped for the exact re-rank, ``--precision``), timed through
``CompressedVectors.search_labels`` against hnswlib's own
``knn_query``: the search itself, no keyword table, on both sides.

Sizes: ``0`` is the artifact's real keyword set; N > 0 a synthetic set of N points drawn
around the real keyword vectors (``benchmarks.index_bench.subspace_noise_generator``, its defaults: 16 directions, sigma 0.7: each a
real vector plus noise in its own low-dimensional subspace, L2-normalised), generated in
chunks and never held whole as float32 (10M x 768 x 4 B = 31 GB). Queries: real dev-split
queries encoded by the artifact's student (what the service searches with). Exact top-10 is
accumulated chunk by chunk while the points are generated.

hnswlib past RAM is not built: its graph needs ``N x (768 x 4 + (2M + 1) x 4 + 8)`` bytes
(31 GiB at 10M, M 32), more than these 24 GiB machines; the row says so.

    python -m benchmarks.scale_bench --artifact artifacts/full --sizes 0,1000000,10000000 \\
        --work /work/scale --out runs/bench/scale.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from benchmarks.index_bench import ExactTopK, artifact_vectors, machine, query_vectors, subspace_noise_generator, \
    synthetic_chunks
from retrieval.compressed import PRECISIONS, VECTOR_FILES, CompressedVectors, build_compressed_chunks, default_factory

CHUNK = 50_000
RAM_BYTES = 24 * 2**30


def hnsw_bytes(n: int, dim: int, m: int) -> int:
    return n * (dim * 4 + (2 * m + 1) * 4 + 8)


def time_queries(search: Callable[[np.ndarray], list[int]], queries: np.ndarray) -> tuple[list[float], list[list[int]]]:
    """Seconds of each query, one at a time, and each query's labels."""
    found, seconds = [], []
    for i in range(len(queries)):
        t0 = time.perf_counter()
        found.append(search(queries[i: i + 1]))
        seconds.append(time.perf_counter() - t0)
    return seconds, found


def recall(found: Sequence[Sequence[int]], exact: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k].tolist())) / k for f, t in zip(found, exact)]))


def sweep(sides: dict[str, Callable[[np.ndarray], list[int]]], queries: np.ndarray, exact: np.ndarray,
          rounds: int, sets: dict[str, slice]) -> dict[str, dict]:
    """Every side over all queries, ``rounds`` times, in turn (the order reversed every round);
    recall per query set (``sets``: name -> rows of ``queries``)."""
    times: dict[str, list[list[float]]] = {name: [] for name in sides}
    labels: dict[str, list] = {}
    names = list(sides)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            seconds, found = time_queries(sides[name], queries)
            times[name].append(seconds)
            labels.setdefault(name, found)
    out = {}
    for name in sides:
        every = np.concatenate(times[name])  # every query of every round: the tail
        p50, p99 = np.percentile(every, [50, 99])
        out[name] = {**{f"recall_at_10_{set_name}": round(recall(labels[name][rows], exact[rows]), 4)
                        for set_name, rows in sets.items()},
                     # the median round's mean (the figure of earlier sessions)
                     "us_per_query": round(1e6 * statistics.median(sum(t) for t in times[name]) / len(queries), 1),
                     "p50_us": round(1e6 * float(p50), 1), "p99_us": round(1e6 * float(p99), 1),
                     "rounds_us": [round(1e6 * sum(t) / len(queries), 1) for t in times[name]]}
    return out


def run_size(n: int, base: np.ndarray, manifest: dict, artifact: Path, queries: np.ndarray, work: Path, *,
             efs: Sequence[int], candidates: Sequence[int], nprobes: Sequence[int], rounds: int, factory: str | None,
             hnsw_max: int, threads: int, precision: str = "auto", log=print) -> dict:
    import hnswlib

    real = n == 0
    n = len(base) if real else n
    dim = base.shape[1]
    folder = work / f"compressed-{n}"
    folder.mkdir(parents=True, exist_ok=True)
    make = subspace_noise_generator(base, subspace=16, sigma=0.7, seed=7)

    def chunks():
        if real:
            yield base
        else:
            for _, vectors in synthetic_chunks(base, n, subspace=16, sigma=0.7, seed=7, chunk=CHUNK, make=make):
                yield vectors

    # Two query sets: the real student queries, and real keywords moved by the generator's noise
    # (near the data, as a new keyword would be; on a synthetic set the real queries land far
    # from every cluster, where hundreds of points are almost equally close).
    rng = np.random.default_rng(11)
    near = make(rng.choice(len(base), len(queries), replace=False), rng)
    sets = {"student_queries": slice(0, len(queries)), "near_keywords": slice(len(queries), 2 * len(queries))}
    queries = np.vstack([queries, near]).astype(np.float32)
    # exact top-10 of the queries (one pass over the points)
    t = time.perf_counter()
    exact_acc = ExactTopK(queries, 10)
    start = 0
    for chunk in chunks():
        exact_acc.add(chunk, start)
        start += len(chunk)
    exact = exact_acc.labels
    log(f"[{n}] exact top-10 in {time.perf_counter() - t:.0f} s")

    t = time.perf_counter()
    for old in VECTOR_FILES.values():  # a file another precision left here would be mistaken for this one's
        (folder / old).unlink(missing_ok=True)
    fields = build_compressed_chunks(chunks, n, dim, folder, factory or default_factory(n), threads=threads,
                                     precision=precision)
    build_s = time.perf_counter() - t
    log(f"[{n}] compressed {fields['factory']} ({fields['precision']} vectors) built in {build_s:.0f} s")
    vectors_file = folder / Path(fields["vectors"]).name
    core = CompressedVectors(folder / "keywords.faiss", vectors_file, n, dim, nprobes[0])
    row = {"n": n, "real": real, "compressed": {
        **fields, "build_s": round(build_s, 1), "ram_bytes_per_keyword": round(core.memory_bytes() / n, 1),
        "disk_bytes_per_keyword": round(((folder / "keywords.faiss").stat().st_size
                                         + vectors_file.stat().st_size) / n, 1)}}

    sides: dict[str, Callable] = {}
    for nprobe in nprobes:
        for c in candidates:
            def search(q, c=c, nprobe=nprobe):
                core.nprobe = nprobe
                return [label for label, _ in core.search_labels(q, 10, c)[0]]
            sides[f"compressed nprobe={nprobe} candidates={c}"] = search

    graph = None
    m = int(manifest["index"].get("M") or 32)
    if real and manifest["index"].get("library", "hnswlib") == "hnswlib":
        graph = hnswlib.Index(space="ip", dim=dim)
        graph.load_index(str(artifact / manifest["index"]["path"]))
        row["hnswlib"] = {"M": m, "build_s": None, "ram_bytes_per_keyword": round(
            (artifact / manifest["index"]["path"]).stat().st_size / n, 1), "source": "the artifact's graph"}
    elif n <= hnsw_max and hnsw_bytes(n, dim, m) < 0.6 * RAM_BYTES:
        t = time.perf_counter()
        graph = hnswlib.Index(space="ip", dim=dim)
        graph.init_index(max_elements=n, M=m, ef_construction=200, random_seed=100)
        graph.set_num_threads(threads)
        start = 0
        for chunk in chunks():
            graph.add_items(chunk, np.arange(start, start + len(chunk)))
            start += len(chunk)
        row["hnswlib"] = {"M": m, "build_s": round(time.perf_counter() - t, 1),
                          "ram_bytes_per_keyword": round(hnsw_bytes(n, dim, m) / n, 1)}
        log(f"[{n}] hnswlib built in {row['hnswlib']['build_s']:.0f} s")
    else:
        need = hnsw_bytes(n, dim, m)
        row["hnswlib"] = {"M": m, "not_built": (f"needs ~{need / 2**30:.1f} GiB of RAM (machine: {RAM_BYTES / 2**30:.0f} GiB)"
                                                if need >= 0.6 * RAM_BYTES else f"above --hnsw-max {hnsw_max}")}
    if graph is not None:
        graph.set_num_threads(1)
        for ef in efs:
            def search(q, ef=ef):
                graph.set_ef(max(ef, 10))
                return graph.knn_query(q, k=10)[0][0].tolist()
            sides[f"hnswlib ef={ef}"] = search

    row["sweep"] = sweep(sides, queries, exact, rounds, sets)
    for name, result in row["sweep"].items():
        log(f"[{n}] {name}: recall@10 {result['recall_at_10_student_queries']:.3f} (student queries), "
            f"{result['recall_at_10_near_keywords']:.3f} (near keywords), {result['us_per_query']:.0f} us (p99 {result['p99_us']:.0f})")
    if not real:
        shutil.rmtree(folder, ignore_errors=True)  # 15 GB at 10M
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artifact", type=Path, required=True)
    ap.add_argument("--sizes", default="0", help="comma-separated; 0 = the artifact's own keyword set")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--efs", default="32,64,128")
    ap.add_argument("--candidates", default="32,64,128")
    ap.add_argument("--nprobes", default="16,32")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--factory", default=None, help="faiss factory string (default: retrieval.compressed.default_factory)")
    ap.add_argument("--precision", default="auto", choices=PRECISIONS,
                    help="the stored vectors' type (default: retrieval.compressed.choose_precision)")
    ap.add_argument("--hnsw-max", type=int, default=1_000_000, help="largest synthetic size hnswlib is built for")
    ap.add_argument("--threads", type=int, default=2, help="build threads")
    ap.add_argument("--work", type=Path, default=Path("runs/scale-work"))
    ap.add_argument("--cache", type=Path, default=Path("runs/bench"))
    ap.add_argument("--out", type=Path, default=Path("runs/bench/scale.json"))
    args = ap.parse_args(argv)
    base, manifest = artifact_vectors(args.artifact)
    queries, _ = query_vectors(args.artifact, "student", args.queries, args.cache)
    result = {"artifact": str(args.artifact), "machine": machine(), "queries": len(queries), "rows": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for size in (int(s) for s in args.sizes.split(",")):
        result["rows"].append(run_size(
            size, base, manifest, args.artifact, queries, args.work,
            efs=[int(x) for x in args.efs.split(",")], candidates=[int(x) for x in args.candidates.split(",")],
            nprobes=[int(x) for x in args.nprobes.split(",")], rounds=args.rounds, factory=args.factory,
            hnsw_max=args.hnsw_max, threads=args.threads, precision=args.precision))
        args.out.write_text(json.dumps(result, indent=2) + "\n")  # after every size: a cut run keeps what it did
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

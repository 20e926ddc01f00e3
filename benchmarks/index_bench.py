"""Index alone: hnswlib queries/s (one thread, batch 1) and recall@10 against exact search, per ef.

Two indexes:

- ``demo``: the artifact's own keyword index, queried with real dev-split web queries
  (the queries encoder_bench uses) encoded by the artifact's teacher and, separately, by
  its student (the vectors the service actually searches with). Encoded once and cached
  in ``--cache`` (``runs/bench/``).
- ``synthetic``: N points (default 1M) with the real keywords' neighbourhood structure.
  The artifact's real 768-d keyword vectors (read back from the graph with
  ``get_items``) are split into parents and held-out vectors; each point is a parent plus
  gaussian noise in that parent's own random low-dimensional subspace (``--subspace``
  directions, noise norm about ``--sigma``), L2-normalised: clusters around the real
  points, spread along a few directions, not a uniform cloud. Queries: the held-out real
  vectors plus the same kind of noise (they fall near, not on, the clusters), and the
  real teacher query vectors. Built with hnswlib (space ip, ``--M``,
  ``--ef-construction``, ``--build-threads``); exact top-k is computed chunk by chunk as
  the points are generated, so the 3 GB of vectors are never held twice.

Every ef is timed on the same queries, the efs taking turns round by round so drift on
a shared machine hits all of them alike; quote medians and ratios.

    python -m benchmarks.index_bench --artifact artifacts/demo --synthetic 1000000 --out runs/bench/index_bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from loadtest.cpus import cpu_model_name

DEFAULT_EFS = (16, 32, 64, 128, 256)


# ---------------------------------------------------------------- exact search and recall


class ExactTopK:
    """Running exact top-k by inner product over vectors added chunk by chunk."""

    def __init__(self, queries: np.ndarray, k: int):
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.k = k
        self.scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
        self.labels = np.zeros((len(queries), 0), dtype=np.int64)

    def add(self, vectors: np.ndarray, first_label: int = 0) -> None:
        sims = self.queries @ np.asarray(vectors, dtype=np.float32).T  # [q, chunk]
        labels = np.arange(first_label, first_label + len(vectors), dtype=np.int64)
        k = min(self.k, sims.shape[1])
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < sims.shape[1] else np.argsort(-sims, axis=1)
        scores = np.concatenate([self.scores, np.take_along_axis(sims, part, axis=1)], axis=1)
        cand = np.concatenate([self.labels, labels[part]], axis=1)
        keep = np.argsort(-scores, axis=1, kind="stable")[:, : self.k]
        self.scores = np.take_along_axis(scores, keep, axis=1)
        self.labels = np.take_along_axis(cand, keep, axis=1)


def exact_topk(data: np.ndarray, queries: np.ndarray, k: int, chunk: int = 65536) -> np.ndarray:
    """Labels [q, k] of the k largest inner products, best first (ties: lower label first)."""
    acc = ExactTopK(queries, k)
    for start in range(0, len(data), chunk):
        acc.add(data[start : start + chunk], start)
    return acc.labels


def recall_at_k(approx: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean over queries of |approx top-k ∩ exact top-k| / k."""
    approx, exact = np.asarray(approx)[:, :k], np.asarray(exact)[:, :k]
    if approx.shape[0] != exact.shape[0]:
        raise ValueError("approx and exact cover different numbers of queries")
    hits = [len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approx, exact)]
    return float(np.mean(hits)) / k


# ---------------------------------------------------------------- timing per ef


@dataclass
class EfRow:
    ef: int
    recall: float
    qps: float  # median over rounds, one thread, one query per call
    us_per_query: float
    rounds_qps: list[float]

    def to_dict(self) -> dict:
        return {"ef": self.ef, "recall_at_k": self.recall, "qps": self.qps, "us_per_query": self.us_per_query,
                "rounds_qps": self.rounds_qps}


def sweep_ef(index, queries: np.ndarray, exact: np.ndarray, efs: Sequence[int] = DEFAULT_EFS, k: int = 10,
             rounds: int = 3, max_seconds: float = 300.0) -> list[EfRow]:
    """Recall@k and single-thread batch-1 queries/s of ``index`` (an hnswlib.Index) per ef.

    Each round runs every ef once over all queries, the order of efs reversed every
    other round. Bounded: stops after ``max_seconds`` (at least one full round)."""
    index.set_num_threads(1)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    times: dict[int, list[float]] = {ef: [] for ef in efs}
    labels: dict[int, np.ndarray] = {}
    t_start = time.perf_counter()
    for r in range(rounds):
        order = list(efs) if r % 2 == 0 else list(reversed(efs))
        for ef in order:
            index.set_ef(max(ef, k))
            out = np.empty((len(queries), k), dtype=np.int64)
            t0 = time.perf_counter()
            for i in range(len(queries)):
                lab, _ = index.knn_query(queries[i : i + 1], k=k)
                out[i] = lab[0]
            times[ef].append(time.perf_counter() - t0)
            labels.setdefault(ef, out)
        if time.perf_counter() - t_start > max_seconds:
            break
    rows = []
    for ef in efs:
        qps_rounds = [len(queries) / t for t in times[ef]]
        qps = statistics.median(qps_rounds)
        rows.append(EfRow(ef, recall_at_k(labels[ef], exact, k), qps, 1e6 / qps, qps_rounds))
    return rows


def ef_for_recall(rows: Sequence[EfRow], target: float = 0.99) -> int | None:
    """The smallest measured ef whose recall reaches ``target`` (None: none did)."""
    ok = [r.ef for r in rows if r.recall >= target]
    return min(ok) if ok else None


# ---------------------------------------------------------------- synthetic data


def subspace_noise_generator(base: np.ndarray, *, subspace: int, sigma: float, seed: int) -> Callable:
    """``make(parents, rng) -> vectors``: base[parents] + noise in each parent's own random
    ``subspace``-dim subspace (orthonormal directions, fixed per parent), norm about sigma,
    L2-normalised."""
    dim = base.shape[1]
    rng = np.random.default_rng([seed, 0])
    dirs = rng.standard_normal((len(base), subspace, dim)).astype(np.float32)
    # orthonormal rows per parent (QR of [dim, subspace])
    for i in range(len(base)):
        q, _ = np.linalg.qr(dirs[i].T)
        dirs[i] = q.T
    scale = np.float32(sigma / np.sqrt(subspace))

    def make(parents: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        z = rng.standard_normal((len(parents), subspace)).astype(np.float32) * scale
        out = base[parents] + np.einsum("ns,nsd->nd", z, dirs[parents])
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out.astype(np.float32)

    return make


def synthetic_chunks(base: np.ndarray, n: int, *, subspace: int, sigma: float, seed: int,
                     chunk: int = 10000, make: Callable | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(first label, vectors) chunks of the synthetic set; deterministic for a seed."""
    make = make or subspace_noise_generator(base, subspace=subspace, sigma=sigma, seed=seed)
    for c, start in enumerate(range(0, n, chunk)):
        rng = np.random.default_rng([seed, 1, c])
        parents = rng.integers(0, len(base), size=min(chunk, n - start))
        yield start, make(parents, rng)


def rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def build_synthetic(base: np.ndarray, n: int, query_sets: dict[str, np.ndarray], *, M: int, ef_construction: int,
                    threads: int, subspace: int, sigma: float, seed: int, k: int = 10, chunk: int = 10000,
                    max_build_s: float = 3600.0, progress: Callable[[str], None] = print):
    """Generate, index (hnswlib ip) and exact-search N synthetic points; returns (index, exact, stats).

    ``max_build_s`` bounds the build: after 5 % of the points the projected total is
    checked and the build refused (ValueError) if it would exceed the bound."""
    import hnswlib

    dim = base.shape[1]
    make = subspace_noise_generator(base, subspace=subspace, sigma=sigma, seed=seed)
    all_queries = np.vstack(list(query_sets.values()))
    exact = ExactTopK(all_queries, k)
    rss0 = rss_bytes()
    index = hnswlib.Index(space="ip", dim=dim)
    index.init_index(max_elements=n, M=M, ef_construction=ef_construction, random_seed=seed)
    index.set_num_threads(threads)
    build_s = gen_s = exact_s = 0.0
    t_all = time.perf_counter()
    checked = False
    for start, vectors in synthetic_chunks(base, n, subspace=subspace, sigma=sigma, seed=seed, chunk=chunk, make=make):
        gen_s += time.perf_counter() - t_all
        t = time.perf_counter()
        index.add_items(vectors, np.arange(start, start + len(vectors)), num_threads=threads)
        build_s += time.perf_counter() - t
        t = time.perf_counter()
        exact.add(vectors, start)
        exact_s += time.perf_counter() - t
        done = start + len(vectors)
        if not checked and done >= 0.05 * n:
            checked = True
            # insertion slows down roughly with log(size): a rough, slightly pessimistic projection
            projected = build_s * (n / done) * (np.log(n) / np.log(max(done, 2)))
            progress(f"  {done} points in {build_s:.0f} s of build; projected total ≈ {projected:.0f} s")
            if projected > max_build_s:
                raise ValueError(f"projected build time {projected:.0f} s exceeds --max-build-s {max_build_s:.0f}")
        if done % (chunk * 10) == 0 or done == n:
            progress(f"  {done}/{n} points: build {build_s:.0f} s, generation {gen_s:.0f} s, exact {exact_s:.0f} s")
        t_all = time.perf_counter()
    stats = {"n": n, "dim": dim, "M": M, "ef_construction": ef_construction, "build_threads": threads,
             "build_s": build_s, "generate_s": gen_s, "exact_s": exact_s,
             "rss_growth_bytes": rss_bytes() - rss0,
             # hnswlib's layout: per point the vector, the level-0 links (2M ids + a count), its label
             "estimated_index_bytes": n * (dim * 4 + (2 * M + 1) * 4 + 8)}
    labels, offset = {}, 0
    for name, q in query_sets.items():
        labels[name] = exact.labels[offset : offset + len(q)]
        offset += len(q)
    return index, labels, stats


# ---------------------------------------------------------------- artifact inputs


def artifact_vectors(artifact: Path) -> tuple[np.ndarray, dict]:
    """The artifact's keyword vectors, read back from its hnswlib graph (label order)."""
    import hnswlib

    from artifact.manifest import verify

    manifest = verify(artifact, checksums=False)
    meta = manifest["index"]
    index = hnswlib.Index(space="ip", dim=int(meta["dim"]))
    index.load_index(str(artifact / meta["path"]))
    n = index.get_current_count()
    vectors = np.asarray(index.get_items(np.arange(n)), dtype=np.float32)
    return vectors, manifest


def query_vectors(artifact: Path, encoder: str, n: int, cache: Path | None) -> tuple[np.ndarray, list[str]]:
    """``n`` real dev-split queries (encoder_bench's) encoded by the artifact's teacher or
    student (fp32 ONNX), cached as .npy keyed by the artifact hash."""
    from benchmarks.encoder_bench import _queries
    from artifact.manifest import verify
    from retrieval.onnx_encoder import OnnxEncoder

    manifest = verify(artifact, checksums=False)
    texts = _queries(n)
    path = None
    if cache:
        path = Path(cache) / f"queries-{encoder}-{manifest['artifact_sha256'][:12]}-{len(texts)}.npy"
        if path.is_file():
            return np.load(path), texts
    enc = manifest["encoders"][encoder]
    onnx = OnnxEncoder(artifact / enc["onnx"], artifact / enc["tokenizer"], enc["max_length"], threads=1)
    vectors = onnx.encode_many(texts, batch_size=32)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, vectors)
    return vectors, texts


def demo_bench(artifact: Path, n_queries: int, efs: Sequence[int], k: int, rounds: int, cache: Path | None,
               encoders: Sequence[str] = ("teacher", "student"), progress: Callable[[str], None] = print) -> dict:
    import hnswlib

    data, manifest = artifact_vectors(artifact)
    meta = manifest["index"]
    index = hnswlib.Index(space="ip", dim=int(meta["dim"]))
    index.load_index(str(artifact / meta["path"]))
    out = {"index": {k2: meta.get(k2) for k2 in ("count", "dim", "M", "ef_construction", "space")},
           "index_file_bytes": (artifact / meta["path"]).stat().st_size, "by_query_encoder": {}}
    for name in encoders:
        t = time.perf_counter()
        q, texts = query_vectors(artifact, name, n_queries, cache)
        progress(f"demo: {len(q)} {name} query vectors ready ({time.perf_counter() - t:.0f} s)")
        exact = exact_topk(data, q, k)
        rows = sweep_ef(index, q, exact, efs, k, rounds)
        out["by_query_encoder"][name] = {"queries": len(q), "rows": [r.to_dict() for r in rows],
                                         "ef_for_recall_0.99": ef_for_recall(rows)}
        progress(markdown_rows(f"demo index ({len(data)} keywords), {name} query vectors", rows))
    return out


def synthetic_bench(artifact: Path, n: int, *, n_queries: int, efs: Sequence[int], k: int, rounds: int,
                    M: int, ef_construction: int, threads: int, subspace: int, sigma: float, holdout: int,
                    seed: int, cache: Path | None, max_build_s: float, save: Path | None,
                    progress: Callable[[str], None] = print) -> dict:
    real, _ = artifact_vectors(artifact)
    rng = np.random.default_rng([seed, 2])
    perm = rng.permutation(len(real))
    held, parents = real[perm[:holdout]], real[perm[holdout:]]
    make_q = subspace_noise_generator(held, subspace=subspace, sigma=sigma, seed=seed + 1)
    q_held = make_q(np.arange(len(held)), np.random.default_rng([seed, 3]))[:n_queries]
    query_sets = {"held-out keywords + noise": q_held}
    try:
        q_real, _ = query_vectors(artifact, "teacher", n_queries, cache)
        query_sets["real queries (teacher)"] = q_real
    except Exception as exc:  # the synthetic part does not depend on it
        progress(f"synthetic: no real query vectors ({exc})")
    progress(f"synthetic: {n} points from {len(parents)} real parents (subspace {subspace}, sigma {sigma}); "
             f"M={M}, ef_construction={ef_construction}, {threads} build threads")
    structure = neighbour_structure(parents, subspace=subspace, sigma=sigma, seed=seed)
    progress(f"synthetic: structure {structure}")
    index, exact, stats = build_synthetic(parents, n, query_sets, M=M, ef_construction=ef_construction,
                                          threads=threads, subspace=subspace, sigma=sigma, seed=seed, k=k,
                                          max_build_s=max_build_s, progress=progress)
    progress(f"synthetic: built in {stats['build_s']:.0f} s; RSS grew {stats['rss_growth_bytes'] / 2**30:.2f} GiB")
    if save:
        t = time.perf_counter()
        index.save_index(str(save))
        stats["saved_to"] = str(save)
        stats["save_s"] = time.perf_counter() - t
        stats["index_file_bytes"] = Path(save).stat().st_size
    out = {"build": stats, "parents": len(parents), "holdout": holdout, "subspace": subspace, "sigma": sigma,
           "structure": structure, "by_query_set": {}}
    for name, q in query_sets.items():
        rows = sweep_ef(index, q, exact[name], efs, k, rounds)
        out["by_query_set"][name] = {"queries": len(q), "rows": [r.to_dict() for r in rows],
                                     "ef_for_recall_0.99": ef_for_recall(rows)}
        progress(markdown_rows(f"synthetic {n} points, {name}", rows))
    # The graph is one big allocation (vectors + level-0 links) plus the upper levels: what
    # the process gives back when it is deleted is the index's memory, free of the noise
    # that freed temporaries leave in an RSS difference taken while building.
    before = rss_bytes()
    del index
    import gc

    gc.collect()
    stats["rss_freed_on_delete_bytes"] = before - rss_bytes()
    progress(f"synthetic: index memory {stats['rss_freed_on_delete_bytes'] / 2**30:.2f} GiB "
             f"(estimate {stats['estimated_index_bytes'] / 2**30:.2f} GiB)")
    return out


def neighbour_structure(parents: np.ndarray, *, subspace: int, sigma: float, seed: int, sample: int = 300) -> dict:
    """How clustered the data is, for the record: median cosine of a real keyword to its
    nearest and 10th-nearest other real keyword, of a synthetic point to its parent, and
    of two points of one cluster."""
    rng = np.random.default_rng([seed, 4])
    idx = rng.choice(len(parents), size=min(sample, len(parents)), replace=False)
    sims = parents[idx] @ parents.T
    sims[np.arange(len(idx)), idx] = -1
    top = -np.sort(-sims, axis=1)
    make = subspace_noise_generator(parents[idx], subspace=subspace, sigma=sigma, seed=seed + 7)
    local = np.arange(len(idx))
    a, b = make(local, rng), make(local, rng)
    return {"median_cos_real_to_nearest_real": float(np.median(top[:, 0])),
            "median_cos_real_to_10th_nearest_real": float(np.median(top[:, 9])),
            "median_cos_point_to_parent": float(np.median(np.sum(a * parents[idx], axis=1))),
            "median_cos_two_points_of_a_cluster": float(np.median(np.sum(a * b, axis=1)))}


# ---------------------------------------------------------------- output


def markdown_rows(title: str, rows: Sequence[EfRow]) -> str:
    base = rows[0].qps if rows else 1.0
    lines = [f"{title}", "| ef | recall@10 | queries/s (1 thread) | µs/query | × qps of ef=" + f"{rows[0].ef} |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.ef} | {r.recall:.4f} | {r.qps:.0f} | {r.us_per_query:.0f} | {r.qps / base:.2f} |")
    return "\n".join(lines)


def machine() -> dict:
    cpu = cpu_model_name() or platform.processor()
    return {"nproc": os.cpu_count(), "cpu": cpu, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "hnswlib": _version("hnswlib"), "numpy": np.__version__}


def _version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--artifact", type=Path, default=Path("artifacts/demo"))
    ap.add_argument("--queries", type=int, default=500, help="real dev-split queries (encoded once, cached)")
    ap.add_argument("--ef", type=int, nargs="+", default=list(DEFAULT_EFS))
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds per ef (medians quoted)")
    ap.add_argument("--no-demo", action="store_true", help="skip the artifact's own index")
    ap.add_argument("--demo-encoders", nargs="+", default=["teacher", "student"])
    ap.add_argument("--synthetic", type=int, default=0, metavar="N", help="also build an N-point synthetic index")
    ap.add_argument("--M", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=100)
    ap.add_argument("--build-threads", type=int, default=2)
    ap.add_argument("--subspace", type=int, default=16, help="noise directions per parent")
    ap.add_argument("--sigma", type=float, default=0.7,
                    help="noise norm (the vectors are unit length); 0.7 puts two points of a cluster about as close "
                         "as a real keyword is to its nearest real neighbour")
    ap.add_argument("--holdout", type=int, default=500, help="real vectors held out of the parents, for queries")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-build-s", type=float, default=1800.0, help="refuse a build projected to take longer")
    ap.add_argument("--save", type=Path, help="save the synthetic index here (3+ GB at 1M)")
    ap.add_argument("--cache", type=Path, default=Path("runs/bench/cache"), help="query vectors cache folder")
    ap.add_argument("--out", type=Path, help="write JSON here")
    args = ap.parse_args(argv)

    result = {"machine": machine(), "command": "python -m benchmarks.index_bench " + " ".join(argv or __import__("sys").argv[1:]),
              "k": args.k, "efs": args.ef}
    if not args.no_demo:
        result["demo"] = demo_bench(args.artifact, args.queries, args.ef, args.k, args.rounds, args.cache,
                                    args.demo_encoders)
    if args.synthetic:
        result["synthetic"] = synthetic_bench(
            args.artifact, args.synthetic, n_queries=args.queries, efs=args.ef, k=args.k, rounds=args.rounds,
            M=args.M, ef_construction=args.ef_construction, threads=args.build_threads, subspace=args.subspace,
            sigma=args.sigma, holdout=args.holdout, seed=args.seed, cache=args.cache, max_build_s=args.max_build_s,
            save=args.save)
    result["machine"]["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

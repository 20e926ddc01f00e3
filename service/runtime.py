"""The loaded artifact: verified manifest, both encoders, the keyword index, the batchers.

The start-up gate (checksums, dimensions, servable flag) is ``service/loader.py``.
``Runtime.load`` creates the ONNX Runtime sessions and the index (blocking; run it in a
thread), ``warm_up`` runs each encoder a few times, ``start`` starts one batch worker per
encoder so the slow teacher never holds up the student.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from artifact.manifest import ArtifactError, encoder_model
from retrieval.base import Hit, IndexUnavailable, SearchParams
from retrieval.hnsw import HnswIndex
from retrieval.local_index import open_local_index
from retrieval.onnx_encoder import OnnxEncoder
from service.batcher import Batcher, Job, join_answers, split_texts, token_counter
from service.concurrency import ConcurrencyLimit
from service.live.keywords import LiveKeywords, LiveUnavailable
from service.live.snapshot import SnapshotError
from service.live.wal import WalCorrupt
from service.errors import NotReady
from service.loader import student_precision
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)

_GENERATIONS = itertools.count(1)
WARMUP_TEXTS = ["cordless drill", "how to fix a leaky faucet in the bathroom", "paint"]
INDEX_PROBE_S = 2.0  # how often a remote index (Milvus) is asked whether it answers


def open_index(settings: Settings, manifest: dict[str, Any], root: Path, ef: int):
    """The keyword index the settings name: the artifact's hnswlib graph, or its Milvus collection."""
    idx = manifest["index"]
    if settings.index_backend != "milvus":
        return open_local_index(root, idx, ef,
                                double_buffer=settings.state_dir is not None and settings.index_double_buffer)
    from retrieval.milvus import MilvusIndex  # pymilvus is the optional extra "scale"

    token = settings.milvus_token.get_secret_value() if settings.milvus_token else ""
    try:
        index = MilvusIndex(settings.milvus_uri, settings.milvus_collection, dim=int(idx["dim"]),
                            artifact_sha256=manifest.get("artifact_sha256"), ef=ef, token=token,
                            timeout_s=settings.milvus_timeout_s, load_timeout_s=settings.milvus_load_timeout_s,
                            nprobe=settings.milvus_nprobe, logger=log)
    except IndexUnavailable as exc:  # unreachable at start: stop with its one sentence
        raise ArtifactError(str(exc).rstrip(".") + ".") from None
    return ServedIndex(index, settings.retry_after_s)


class ServedIndex:
    """A remote index as the service serves it: IndexUnavailable becomes a 503 with Retry-After.

    The backend may fail while serving (Milvus restarted, a network partition); that is the
    backend's trouble, not a bug of ours, so the client is told to come back (503) instead of
    a 500, and readiness (``index_ready``) goes false until the probe sees it answer again.
    """

    def __init__(self, index: Any, retry_after_s: int):
        self.inner = index
        self.retry_after_s = retry_after_s
        self.ready = True

    def __getattr__(self, name: str) -> Any:  # dim, backend, healthy, properties ...
        return getattr(self.inner, name)

    def _guard(self, fn, *args):
        try:
            return fn(*args)
        except IndexUnavailable as exc:
            self.ready = False
            raise NotReady(str(exc), code="index_unavailable",
                           headers={"Retry-After": str(self.retry_after_s)}) from None

    def __len__(self) -> int:
        return self._guard(len, self.inner)

    def verify(self) -> None:
        self._guard(self.inner.verify)

    def search(self, vectors: np.ndarray, params: SearchParams):
        return self._guard(self.inner.search, vectors, params)

    def upsert(self, ids, vectors, texts, attributes) -> None:
        self._guard(self.inner.upsert, ids, vectors, texts, attributes)

    def delete(self, ids) -> int:
        return self._guard(self.inner.delete, ids)

    def get(self, keyword_id: str):
        return self._guard(self.inner.get, keyword_id)


@dataclass
class Query:
    """What a request asks of an encoder batch."""

    texts: list[str]
    k: int = 0  # 0: embed only, no index search
    ef: int = 0
    want_vectors: bool = False
    filter: Optional[dict] = None  # attribute -> value or list of values, inside the ANN search


@dataclass
class Answer:
    """One job's share of a batch."""

    truncated: list[bool]
    hits: Optional[list[list[Hit]]] = None  # per query, best first
    vectors: Optional[np.ndarray] = None
    queue_s: float = 0.0
    encode_s: float = 0.0
    index_s: float = 0.0
    batch: int = 1


@dataclass
class EncoderSlot:
    name: str
    precision: str
    model: str
    encoder: OnnxEncoder
    # Dynamic int8 quantisation scales activations over the whole input tensor, so a
    # batched int8 run depends on its neighbours; run such a model one query at a time
    # (tokenised and searched as a batch) to keep answers independent of the batch.
    row_by_row: bool
    # Searches answered on the event loop, without the batch worker: the encoder is
    # batch-invariant and a query costs it less than the hand-off to a worker thread
    # (HLM_INLINE_ENCODE_US; set at start from the calibrated cost).
    inline: bool = False
    batcher: Optional[Batcher] = None
    limit: Optional[ConcurrencyLimit] = None  # the edge's in-flight limit (service/concurrency.py)
    m_encode: Any = None
    m_wait: Any = None
    m_index: Any = None
    m_queries: Any = None


class Runtime:
    def __init__(self, settings: Settings, manifest: dict[str, Any], metrics: Metrics, root: Optional[Path] = None):
        self.settings = settings
        self.root = Path(root or settings.artifact_dir)
        self.manifest = manifest
        self.metrics = metrics
        self.precision = student_precision(settings, manifest)
        self.slots: dict[str, EncoderSlot] = {}
        self.index: Optional[HnswIndex] = None
        self.default_ef = ((settings.index_backend == "milvus" and settings.milvus_ef) or settings.ef
                           or int(manifest["index"].get("ef") or 64))
        self._index_probe: Optional[asyncio.Task] = None
        self.live: Optional[LiveKeywords] = None  # live keyword changes (HLM_STATE_DIR), shared across reloads
        self.lexical = None  # BM25 over the artifact's keywords (retrieval/lexical.py), when it carries one
        self.generation = next(_GENERATIONS)  # what result caches key on (service/result_cache.py)

    # ---- loading (blocking) ----

    def load(self, encoders: Sequence[str] = ("student", "teacher")) -> None:
        root = self.root
        enc = self.manifest["encoders"]
        threads, provider = self.settings.threads, self.settings.provider
        for name in encoders:
            spec = enc[name]
            precision = self.precision if name == "student" else "fp32"
            model = encoder_model(spec, precision)
            t0 = time.perf_counter()
            try:
                encoder = OnnxEncoder(root / model, root / spec["tokenizer"], int(spec.get("max_length") or 128),
                                      threads=threads, provider=provider)
            except RuntimeError as exc:
                if "HLM_PROVIDER" in str(exc):
                    raise
                raise ArtifactError(f"The {name} model {model} or its tokenizer cannot be loaded "
                                    f"({exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}).") from None
            if encoder.dim != self.manifest["index"]["dim"]:
                raise ArtifactError(f"The {name} ONNX model outputs {encoder.dim}-d vectors but the index holds "
                                    f"{self.manifest['index']['dim']}-d vectors.")
            mismatch = encoder.vocabulary_mismatch()
            if mismatch:
                raise ArtifactError(f"The {name} tokenizer {spec['tokenizer']} does not belong to the model {model}: "
                                    f"{mismatch}.")
            log.info("%s encoder %s (%s) on %s loaded in %.1f s", name, model, precision, encoder.provider,
                     time.perf_counter() - t0)
            # The manifest says which precisions give a text the same vector whatever its
            # batch-mates (older manifests: fp32 yes, dynamic int8 no).
            invariant = (spec.get("batch_invariant") or {}).get(precision, precision != "int8")
            row_by_row = not invariant and self.settings.exact_batches
            slot = EncoderSlot(name, precision, spec.get("model", name), encoder, row_by_row=row_by_row)
            slot.m_encode = self.metrics.encoder_duration.labels(name, precision)
            slot.m_wait = self.metrics.queue_wait.labels(name)
            slot.m_index = self.metrics.index_duration.labels(name)
            slot.m_queries = self.metrics.queries.labels(name)
            self.slots[name] = slot
        idx = self.manifest["index"]
        try:
            self.index = open_index(self.settings, self.manifest, root, self.default_ef)
        except (RuntimeError, ValueError, OSError) as exc:
            raise ArtifactError(f"The index {idx['path']} cannot be loaded ({str(exc).rstrip('.')}).") from None
        # A Milvus collection also holds the live upserts and deletes made since its push (they
        # are durable there), so its size may differ from the artifact's; verify() checks its origin.
        if idx.get("count") is not None and self.index.backend == "hnswlib" and int(idx["count"]) != len(self.index):
            raise ArtifactError(f"The index holds {len(self.index)} keywords but the manifest says {idx['count']}.")
        try:
            self.index.verify()
        except ValueError as exc:
            raise ArtifactError(f"The index {idx['path']} cannot be served: {exc}.") from None
        log.info("index: %d keywords, dim %d, ef %d", len(self.index), self.index.dim, self.default_ef)
        lexical = self.manifest.get("lexical")
        if lexical and self.index.backend != "milvus":  # BM25 for "fusion": "rrf" (retrieval/lexical.py)
            from artifact.store import read_store
            from retrieval.lexical import LexicalIndex

            try:
                self.lexical = LexicalIndex(root / lexical["path"], read_store(root / idx["store"])[0])
            except (OSError, ValueError) as exc:
                raise ArtifactError(f"The lexical index {lexical['path']} cannot be loaded ({str(exc).rstrip('.')}).") from None
        if self.live is None and self.settings.state_dir is not None and "teacher" in self.slots:
            self._open_live()

    def _open_live(self) -> None:
        """Start-up only: the state folder's snapshot + log onto this artifact's index. (A reload
        carries the open live set over instead: service/reload.py.)"""
        try:
            self.live = LiveKeywords(self.settings.state_dir, self.metrics, queue_size=self.settings.ingest_queue_size,
                                     snapshot_every=self.settings.snapshot_every,
                                     snapshot_bytes=self.settings.snapshot_log_bytes,
                                     niceness=self.settings.ingest_niceness)
            self.live.attach(self.index, self.slots["teacher"].encoder, self.teacher_sha256)
        except (LiveUnavailable, WalCorrupt, SnapshotError, OSError, ValueError) as exc:
            raise ArtifactError(f"The live keywords in {self.settings.state_dir} cannot be loaded: {exc}") from None

    @property
    def teacher_sha256(self) -> str:
        """The teacher's identity for live keyword vectors: its ONNX file's sha256 in the manifest."""
        onnx = self.manifest["encoders"]["teacher"]["onnx"]
        return str(self.manifest["files"][onnx]["sha256"])

    def warm_up(self) -> None:
        rounds = self.settings.warmup_rounds
        for slot in self.slots.values():
            for _ in range(rounds):
                for text in WARMUP_TEXTS:
                    self._encode(slot, [text])
                if not slot.row_by_row:
                    self._encode(slot, WARMUP_TEXTS)
            if rounds:
                vectors = self._encode(slot, WARMUP_TEXTS)[0]
                self.index.search(vectors, SearchParams(self.settings.default_k))

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        s = self.settings
        self.metrics.index_size.set(len(self.index))
        self.metrics.keywords_live.set(len(self.index))
        if self.live is not None:  # the ingest thread (once per process: a reload carries it over)
            self.live.start(loop)
        for name, slot in self.slots.items():
            student = name == "student"
            budget_ms = s.max_queue_wait_ms if student else s.teacher_queue_wait_ms
            # One text at a time: encode_batch hands even one text to the tokenizer's thread pool,
            # which the worker's own tokenising also uses (c=1 wrk: 312 vs 349 served/s).
            tokens = token_counter(lambda texts, tok=slot.encoder.tokenizer: [len(tok.encode(t).ids) for t in texts],
                                   slot.encoder.max_length)

            def calibrate(slot=slot, tokens=tokens) -> tuple[float, int]:
                # Seeds the cost per token before the first job (in the worker thread): the
                # faster of two runs of the warm-up texts, which are already warm.
                units = slot.batcher.cost_units(tokens(WARMUP_TEXTS))
                runs = []
                for _ in range(2):
                    t0 = time.perf_counter()
                    self._encode(slot, list(WARMUP_TEXTS))
                    runs.append(time.perf_counter() - t0)
                return min(runs), units

            slot.batcher = Batcher(
                name,
                lambda jobs, slot=slot: self.run_batch(slot, jobs),
                max_batch=s.max_batch if student else s.teacher_batch,
                max_batch_tokens=s.max_batch_tokens if student else s.teacher_max_batch_tokens,
                max_wait_s=s.max_wait_ms / 1000.0,
                queue_size=s.queue_size,
                retry_after_s=s.retry_after_s,
                max_queue_wait_s=None if budget_ms is None else budget_ms / 1000.0,
                slo_s=(s.slo_ms if student else s.teacher_slo_ms) / 1000.0,
                max_request_s=(s.max_request_ms if student else s.teacher_max_request_ms) / 1000.0,
                tokens=tokens, split=split_texts, join=join_answers, calibrate=calibrate,
                metrics=self.metrics,
            )
            slot.batcher.start(loop)
            slot.inline = self._inline_capable(slot)
            slot.limit = ConcurrencyLimit(name, slot.batcher.slo_s, fixed=s.max_in_flight,
                                          retry_after_s=s.retry_after_s, metrics=self.metrics)
        if hasattr(self.index, "healthy"):
            self._index_probe = loop.create_task(self._probe_index())

    def _inline_capable(self, slot: EncoderSlot) -> bool:
        """Whether ``slot`` answers searches on the event loop: batch-invariant, and one query's
        encode (the median of a few warm runs) within HLM_INLINE_ENCODE_US."""
        limit_s = self.settings.inline_encode_us / 1e6
        if not limit_s or slot.row_by_row:
            return False
        runs = []
        for _ in range(5):
            for text in WARMUP_TEXTS:
                t0 = time.perf_counter()
                self._encode(slot, [text])
                runs.append(time.perf_counter() - t0)
            if min(runs) > 4 * limit_s:  # the teacher: no need to time it further
                return False
        cost = float(np.median(runs))
        log.info("%s encoder: %.0f us a query; searches answered %s", slot.name, cost * 1e6,
                 "on the event loop" if cost <= limit_s else "by its batch worker")
        return cost <= limit_s

    @property
    def index_ready(self) -> bool:
        """False while a remote index does not answer (readiness should follow it)."""
        return getattr(self.index, "ready", True)

    async def _probe_index(self) -> None:
        """Ask a remote index whether it answers; recovery needs no restart, only this."""
        while True:
            ok = await asyncio.to_thread(self.index.healthy)
            if ok != self.index.ready:
                self.index.ready = ok
                self.metrics.ready.set(1 if ok else 0)
            await asyncio.sleep(INDEX_PROBE_S)

    async def close(self) -> None:
        if self._index_probe is not None:
            self._index_probe.cancel()
        # The student first: shadow jobs it queues go to the teacher, drained after.
        for slot in self.slots.values():
            if slot.batcher is not None:
                await slot.batcher.close()
        # The batch function and the calibration close over this runtime (runtime -> slot ->
        # batcher -> closure -> runtime): cut the loop once the workers have stopped, so the
        # artifact (ONNX sessions, index: ~1 GB on the full one) is freed when the reload drops
        # its last reference, not whenever the cyclic GC next reaches its oldest generation,
        # which it did not do for minutes: every reload kept the old artifact (issue #28 A).
        for slot in self.slots.values():
            if slot.batcher is not None and slot.batcher.stopped:
                slot.batcher.fn = slot.batcher.calibrate = None

    # ---- the batch function (worker thread) ----

    def _encode(self, slot: EncoderSlot, texts: list[str]) -> tuple[np.ndarray, list[bool]]:
        out = slot.encoder.encode_each(texts) if slot.row_by_row and len(texts) > 1 else slot.encoder.encode(texts)
        return out.vectors, out.truncated

    def run_inline(self, slot: EncoderSlot, query: Query, waited_s: float = 0.0) -> Answer:
        """One request's answer computed here and now (the event loop's thread): for an encoder
        cheaper than the hand-off to its batch worker (``EncoderSlot.inline``). The same
        encode and search as a batch of one, so the answer is the one ``run_batch`` gives it.
        ``waited_s``: its wait in the event loop, its queue (service/loopgate.py)."""
        slot.m_wait.observe(waited_s)
        t0 = time.perf_counter()
        vectors, truncated = self._encode(slot, query.texts)
        t1 = time.perf_counter()
        slot.m_encode.observe(t1 - t0)
        hits = None
        if query.k:
            hits = self.index.search(vectors, SearchParams(query.k, max(query.ef, query.k), query.filter))
            slot.m_index.observe(time.perf_counter() - t1)
        t2 = time.perf_counter()
        slot.m_queries.inc(len(query.texts))
        return Answer(truncated=truncated, hits=hits, vectors=vectors if query.want_vectors else None,
                      queue_s=waited_s, encode_s=t1 - t0, index_s=(t2 - t1) if query.k else 0.0,
                      batch=len(query.texts))

    def run_batch(self, slot: EncoderSlot, jobs: Sequence[Job]) -> list[Answer]:
        queries: list[Query] = [job.payload for job in jobs]
        texts = [t for q in queries for t in q.texts]
        t0 = time.perf_counter()
        vectors, truncated = self._encode(slot, texts)
        t1 = time.perf_counter()
        slot.m_encode.observe(t1 - t0)

        # Rows answered by one index call share an effective ef (max(ef, k), what hnswlib
        # uses) and a filter; within a group the top-k of a larger-k search equals a k search,
        # so the answer does not depend on which other requests rode in the batch.
        spans, start = [], 0
        groups: dict[tuple, list[int]] = {}
        for qi, q in enumerate(queries):
            spans.append((start, start + len(q.texts)))
            start += len(q.texts)
            if q.k:
                key = (max(q.ef, q.k), json.dumps(q.filter, sort_keys=True) if q.filter else None)
                groups.setdefault(key, []).append(qi)
        hits: dict[int, list[list[Hit]]] = {}
        for (ef, _), members in groups.items():
            rows = [r for qi in members for r in range(*spans[qi])]
            k = max(queries[qi].k for qi in members)
            found = self.index.search(vectors[rows], SearchParams(k, ef, queries[members[0]].filter))
            pos = 0
            for qi in members:
                n, kq = len(queries[qi].texts), queries[qi].k
                hits[qi] = [row[:kq] for row in found[pos:pos + n]]
                pos += n
        t2 = time.perf_counter()
        if groups:
            slot.m_index.observe(t2 - t1)
        slot.m_queries.inc(len(texts))

        answers = []
        for qi, (job, q) in enumerate(zip(jobs, queries)):
            a, b = spans[qi]
            answers.append(Answer(
                truncated=truncated[a:b],
                hits=hits.get(qi),
                vectors=vectors[a:b] if q.want_vectors else None,
                queue_s=job.started - job.enqueued,
                encode_s=t1 - t0,
                index_s=(t2 - t1) if q.k else 0.0,
                batch=len(texts),
            ))
        return answers

    # ---- summary for /v1/info and hlm_build_info ----

    def info(self) -> dict[str, Any]:
        m = self.manifest
        enc = m["encoders"]
        idx = m["index"]
        return {
            "artifact": {"path": str(self.settings.artifact_dir), "resolved": str(self.root), "sha256": m.get("artifact_sha256"),
                         "name": m.get("name"), "created_utc": m.get("created_utc")},
            "encoders": {
                name: {
                    "model": enc[name].get("model"),
                    "base_model": enc[name].get("base_model"),
                    "precision": self.precision if name == "student" else "fp32",
                    "dim": enc[name].get("dim"),
                    "max_length": enc[name].get("max_length"),
                    "pooling": enc[name].get("pooling"),
                    "provider": self.slots[name].encoder.provider if name in self.slots else None,
                }
                for name in ("student", "teacher")
            },
            "index": {key: idx.get(key) for key in ("library", "space", "dim", "M", "ef_construction", "ef", "count")}
            | {"default_ef": self.default_ef},
            "corpus": {"rows": (m.get("corpus") or {}).get("rows")},
            "eval": m.get("eval"),
            "gate": m.get("gate"),
            "limits": {
                "default_k": self.settings.default_k, "max_k": self.settings.max_k, "max_ef": self.settings.max_ef,
                "max_queries": self.settings.max_queries, "max_query_chars": self.settings.max_query_chars,
                "max_body_bytes": self.settings.max_body_bytes,
            },
            "batching": {"max_batch": self.settings.max_batch, "teacher_max_batch": self.settings.teacher_batch,
                         "max_wait_ms": self.settings.max_wait_ms, "queue_size": self.settings.queue_size,
                         "exact_batches": self.settings.exact_batches},
            "shadow_rate": self.settings.shadow_rate,
        }

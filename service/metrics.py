"""Prometheus metrics, one registry per app (so tests can create several apps).

The names and labels are a contract shared with the load-test harness and the Prometheus
rules: change them only together with those.

Under ``hlm serve --workers N`` (``PROMETHEUS_MULTIPROC_DIR`` set by ``service.workers``)
every worker writes its values to files there and a scrape of any worker answers the sums
over all of them: counters and histograms add up; each gauge says how (``multiprocess_mode``:
``livesum`` for queue depths and bytes, ``livemax`` for readiness and ages,
``livemostrecent`` for what every worker holds alike). The ``hlm_build`` info (not supported
by that mode) is the answering worker's own.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, disable_created_metrics
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

# No `*_created` series: they double the exposition and nothing here reads them.
disable_created_metrics()

# Fine enough for a 1 ms p99, from 0.25 ms to 1 s.
LATENCY_BUCKETS = (
    0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075,
    0.01, 0.0125, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
OVERLAP_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
ENCODERS = ("student", "teacher")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_duration = Histogram(
            "hlm_request_duration_seconds", "HTTP request duration, end to end inside the server.",
            ["route", "encoder", "status"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.encoder_duration = Histogram(
            "hlm_encoder_duration_seconds", "Encoder time per batch (tokenise + ONNX Runtime).",
            ["encoder", "precision"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.index_duration = Histogram(
            "hlm_index_duration_seconds", "HNSW search time per batch.",
            ["encoder"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.queue_wait = Histogram(
            "hlm_queue_wait_seconds", "Time a request waited in its encoder's queue.",
            ["encoder"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "hlm_batch_size", "Queries per encoder batch.", ["encoder"], buckets=BATCH_BUCKETS, registry=r,
        )
        self.queue_depth = Gauge("hlm_queue_depth", "Requests waiting in each encoder's queue.", ["encoder"], registry=r,
                                 multiprocess_mode="livesum")
        self.in_flight = Gauge("hlm_in_flight", "Requests admitted for each encoder and not yet answered.", ["encoder"],
                               registry=r, multiprocess_mode="livesum")
        self.in_flight_limit = Gauge("hlm_in_flight_limit", "Requests each encoder may carry at once (measured rate x 0.35 x "
                                     "its SLO; 0: no limit yet), service/concurrency.py.", ["encoder"], registry=r,
                                     multiprocess_mode="livesum")
        self.rejected = Counter(
            "hlm_rejected_total", "Requests refused or dropped, by reason.", ["encoder", "reason"], registry=r,
        )
        self.queries = Counter("hlm_queries_total", "Queries encoded and answered.", ["encoder"], registry=r)
        self.refusals_held = Counter("hlm_refusals_held_total", "Requests held (up to HLM_REFUSAL_HOLD_MS) before being "
                                     "read because their connection re-sent at once after a refusal (service/loopgate.py).",
                                     registry=r)
        self.index_size = Gauge("hlm_index_size", "Keywords in the index.", registry=r, multiprocess_mode="livemostrecent")
        self.build_info = Info("hlm_build", "The served build: code version, models, artifact.", registry=r)
        self.shadow_overlap = Histogram(
            "hlm_shadow_overlap", "overlap@k of student results against the teacher's (shadow traffic).",
            buckets=OVERLAP_BUCKETS, registry=r,
        )
        self.ready = Gauge("hlm_ready", "1 when the artifact is loaded and warm (in any worker).", registry=r,
                           multiprocess_mode="livemax")
        self.reloads = Counter("hlm_reloads_total", "Artifact reloads (POST /admin/reload, SIGHUP) by result.",
                               ["result"], registry=r)
        self.artifact_loaded = Gauge("hlm_artifact_loaded_timestamp_seconds",
                                     "When the artifact now served was swapped in (Unix time).", registry=r,
                                     multiprocess_mode="livemax")
        # Live keywords (service/live/) and the result cache (service/result_cache.py).
        self.keywords_live = Gauge("hlm_keywords_live", "Keywords searchable now (artifact + live changes).", registry=r,
                                   multiprocess_mode="livemostrecent")
        self.keyword_changes = Counter("hlm_keyword_changes_total", "Keywords upserted / deleted by POST /admin/keywords, "
                                       "by outcome (ok: durable and visible; refused: bad input; failed: not applied).",
                                       ["op", "outcome"], registry=r)
        self.ingest_queue_depth = Gauge("hlm_ingest_queue_depth", "Keyword changes waiting for the ingest thread.", registry=r,
                                        multiprocess_mode="livesum")
        self.ingest_encode = Histogram("hlm_ingest_encode_seconds", "Teacher encoding time per keyword change.",
                                       buckets=LATENCY_BUCKETS + (2.0, 5.0, 10.0), registry=r)
        self.live_log_bytes = Gauge("hlm_live_log_bytes", "Size of the write-ahead log of live keyword changes.", registry=r,
                                    multiprocess_mode="livemax")
        self.live_snapshot_age = Gauge("hlm_live_snapshot_age_seconds", "Seconds since the last live keyword snapshot.",
                                       registry=r, multiprocess_mode="livemax")
        self.result_cache = Counter("hlm_result_cache_total", "Result cache look-ups by encoder and result (hit, miss).",
                                    ["encoder", "result"], registry=r)
        self.result_cache_bytes = Gauge("hlm_result_cache_bytes", "Estimated bytes held by the result cache.", registry=r,
                                        multiprocess_mode="livesum")
        for op in ("upsert", "delete"):
            for outcome in ("ok", "refused", "failed"):
                self.keyword_changes.labels(op, outcome)
        for name in ENCODERS:  # expose zero series from the start
            self.queries.labels(name)
            self.rejected.labels(name, "queue_full")
        for result in ("ok", "refused"):
            self.reloads.labels(result)

        # What a scrape reads: this registry, or under --workers N the sums over every worker.
        self.scraped = self.registry
        self.request_duration_all = self.request_duration  # GET /v1/stats reads it
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self.scraped = CollectorRegistry()
            MultiProcessCollector(self.scraped)
            self.scraped.register(self.build_info)
            self.request_duration_all = _Only(self.scraped, "hlm_request_duration_seconds")

    def own_queries(self) -> dict[str, float]:
        """Queries answered by this process alone, by encoder (its registry, never the sums)."""
        return {s.labels["encoder"]: s.value for family in self.queries.collect() for s in family.samples
                if s.name == "hlm_queries_total"}

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.scraped), CONTENT_TYPE_LATEST


class _Only:
    """One metric family out of a registry's collection (the summed histogram for /v1/stats)."""

    def __init__(self, registry: CollectorRegistry, name: str) -> None:
        self.registry, self.name = registry, name

    def collect(self):
        return [family for family in self.registry.collect() if family.name == self.name]

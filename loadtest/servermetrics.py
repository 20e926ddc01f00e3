"""The server's own view of a step, from two scrapes of its ``/metrics``.

A Prometheus histogram is a set of cumulative counters, one per bucket upper bound ``le``.
Subtracting the scrape taken before a step from the one taken after gives exactly the
requests the server finished during the step; the quantile of that difference is computed
the way PromQL's ``histogram_quantile`` does (linear interpolation inside the bucket that
holds the rank), so the numbers agree with what a dashboard on the same metrics shows.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Mapping

from prometheus_client.parser import text_string_to_metric_families

REQUEST_HISTOGRAM = "hlm_request_duration_seconds"
REJECTED_COUNTER = "hlm_rejected_total"
SEARCH_ROUTE = "/v1/search"

LabelKey = frozenset  # frozenset of (label, value) pairs, without "le"


@dataclass
class Histogram:
    """One histogram series (or a sum of several): cumulative bucket counts by upper bound."""

    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    count: float = 0.0
    sum: float = 0.0

    def sorted_buckets(self) -> list[tuple[float, float]]:
        return sorted(self.buckets.items())

    def __add__(self, other: "Histogram") -> "Histogram":
        les = set(self.buckets) | set(other.buckets)
        return Histogram(
            {le: self.buckets.get(le, 0.0) + other.buckets.get(le, 0.0) for le in les},
            self.count + other.count,
            self.sum + other.sum,
        )

    def __sub__(self, before: "Histogram") -> "Histogram":
        les = set(self.buckets) | set(before.buckets)
        return Histogram(
            {le: self.buckets.get(le, 0.0) - before.buckets.get(le, 0.0) for le in les},
            self.count - before.count,
            self.sum - before.sum,
        )


class CounterReset(RuntimeError):
    """A counter went down between two scrapes: the server restarted mid-step."""


def parse_histograms(text: str, name: str) -> dict[LabelKey, Histogram]:
    """Every series of histogram ``name`` in a Prometheus text exposition, keyed by labels."""
    out: dict[LabelKey, Histogram] = {}
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for s in family.samples:
            labels = {k: v for k, v in s.labels.items() if k != "le"}
            h = out.setdefault(frozenset(labels.items()), Histogram())
            if s.name == name + "_bucket":
                h.buckets[float(s.labels["le"])] = float(s.value)  # float("+Inf") is inf
            elif s.name == name + "_count":
                h.count = float(s.value)
            elif s.name == name + "_sum":
                h.sum = float(s.value)
    return out


def parse_counters(text: str, name: str) -> dict[LabelKey, float]:
    """Every series of counter ``name`` (the family name, without ``_total``)."""
    base = name[: -len("_total")] if name.endswith("_total") else name
    out: dict[LabelKey, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != base:
            continue
        for s in family.samples:
            if s.name == base + "_total":
                out[frozenset(s.labels.items())] = float(s.value)
    return out


def _matches(key: LabelKey, selector: Mapping[str, str]) -> bool:
    labels = dict(key)
    return all(labels.get(k) == v for k, v in selector.items())


def select_sum(series: Mapping[LabelKey, Histogram], **selector: str) -> Histogram:
    """Sum of the series whose labels match ``selector`` (PromQL ``sum by (le)``)."""
    total = Histogram()
    for key, h in series.items():
        if _matches(key, selector):
            total = total + h
    return total


def delta(after: Histogram, before: Histogram) -> Histogram:
    """``after - before``, refusing a counter reset rather than reporting nonsense."""
    d = after - before
    if d.count < 0 or any(v < 0 for v in d.buckets.values()):
        raise CounterReset("a histogram counter decreased between scrapes (server restarted?)")
    return d


def histogram_quantile(q: float, buckets: list[tuple[float, float]] | Histogram) -> float:
    """PromQL's ``histogram_quantile`` on cumulative (le, count) buckets.

    Same rules as Prometheus (promql/quantile.go, bucketQuantile): NaN without a +Inf bucket
    or without observations; a rank in the +Inf bucket returns the highest finite bound; the
    first bucket interpolates from 0 (if its bound is positive); otherwise linear
    interpolation between the bucket's lower and upper bound.
    """
    if isinstance(buckets, Histogram):
        buckets = buckets.sorted_buckets()
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    bs = sorted(buckets)
    if len(bs) < 2 or not math.isinf(bs[-1][0]):
        return math.nan
    # Prometheus forces counts monotonic (scrape races can break it by a hair).
    fixed, running = [], 0.0
    for le, c in bs:
        running = max(running, c)
        fixed.append((le, running))
    bs = fixed
    observations = bs[-1][1]
    if observations == 0:
        return math.nan
    rank = q * observations
    b = next((i for i in range(len(bs) - 1) if bs[i][1] >= rank), len(bs) - 1)
    if b == len(bs) - 1:
        return bs[-2][0]
    if b == 0 and bs[0][0] <= 0:
        return bs[0][0]
    start, end, count = 0.0, bs[b][0], bs[b][1]
    if b > 0:
        start = bs[b - 1][0]
        count -= bs[b - 1][1]
        rank -= bs[b - 1][1]
    return start + (end - start) * (rank / count)


@dataclass
class ServerStats:
    """What the server saw during one step, for one encoder (latencies in ms)."""

    requests: int  # all statuses
    ok_requests: int  # status 200
    window_s: float
    rps: float  # ok requests per second of the window
    p50: float | None
    p90: float | None
    p99: float | None
    mean: float | None
    by_status: dict[str, int]
    rejected: dict[str, int]  # hlm_rejected_total delta by reason

    def to_dict(self) -> dict:
        return asdict(self)


def _ms(x: float) -> float | None:
    return None if math.isnan(x) else x * 1000.0


def server_step_stats(
    before_text: str,
    after_text: str,
    window_s: float,
    encoder: str,
    *,
    route: str = SEARCH_ROUTE,
    metric: str = REQUEST_HISTOGRAM,
) -> ServerStats:
    """Server-side throughput and percentiles of one encoder from two /metrics texts.

    Percentiles use status="200" only (errors are fast and would flatter the tail); the
    request count by status shows what else happened.
    """
    before = parse_histograms(before_text, metric)
    after = parse_histograms(after_text, metric)
    statuses = {dict(k).get("status") for k in after if _matches(k, {"route": route, "encoder": encoder})}
    by_status: dict[str, int] = {}
    for st in sorted(s for s in statuses if s is not None):
        sel = {"route": route, "encoder": encoder, "status": st}
        d = delta(select_sum(after, **sel), select_sum(before, **sel))
        if d.count:
            by_status[st] = int(round(d.count))
    ok = delta(
        select_sum(after, route=route, encoder=encoder, status="200"),
        select_sum(before, route=route, encoder=encoder, status="200"),
    )
    rej_before = parse_counters(before_text, REJECTED_COUNTER)
    rej_after = parse_counters(after_text, REJECTED_COUNTER)
    rejected: dict[str, int] = {}
    for key, v in rej_after.items():
        labels = dict(key)
        if labels.get("encoder") == encoder:
            d_rej = v - rej_before.get(key, 0.0)
            if d_rej:
                rejected[labels.get("reason", "?")] = int(round(d_rej))
    n_ok = int(round(ok.count))
    return ServerStats(
        requests=sum(by_status.values()),
        ok_requests=n_ok,
        window_s=window_s,
        rps=n_ok / window_s if window_s > 0 else 0.0,
        p50=_ms(histogram_quantile(0.50, ok)) if n_ok else None,
        p90=_ms(histogram_quantile(0.90, ok)) if n_ok else None,
        p99=_ms(histogram_quantile(0.99, ok)) if n_ok else None,
        mean=(ok.sum / ok.count * 1000.0) if n_ok else None,
        by_status=by_status,
        rejected=rejected,
    )

"""Latency recording in an HdrHistogram, and the percentile summary every report uses.

HdrHistogram keeps every value to 3 significant digits in fixed memory, so a step of any
length reports exact-enough tails (p99.9, max) and histograms can be merged and stored
(base64) in results.json for later plots.
"""

from __future__ import annotations

from hdrh.histogram import HdrHistogram  # the PyPI package "hdrhistogram" installs "hdrh"

# Values are microseconds: 1 us .. 10 min covers a loopback hit and a timed-out request.
LOWEST_US = 1
HIGHEST_US = 600_000_000
SIGNIFICANT_DIGITS = 3

PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def record_seconds(hist: HdrHistogram, seconds: float) -> None:
    us = int(seconds * 1e6)
    hist.record_value(min(max(us, LOWEST_US), HIGHEST_US))


def pct_key(p: float) -> str:
    """50.0 -> 'p50', 99.9 -> 'p99.9' (stable JSON keys)."""
    return "p" + (f"{p:g}")


def summarize(hist: HdrHistogram) -> dict:
    """Percentiles, max and mean in milliseconds, plus the count (None when empty)."""
    n = hist.get_total_count()
    out: dict = {"count": n}
    for p in PERCENTILES:
        out[pct_key(p)] = hist.get_value_at_percentile(p) / 1000.0 if n else None
    out["max"] = hist.get_max_value() / 1000.0 if n else None
    out["mean"] = hist.get_mean_value() / 1000.0 if n else None
    return out


def encode(hist: HdrHistogram) -> str | None:
    """Compressed base64 form for results.json (None for an empty histogram)."""
    if not hist.get_total_count():
        return None
    data = hist.encode()
    return data.decode("ascii") if isinstance(data, bytes) else data


def decode(encoded: str | None) -> HdrHistogram:
    if not encoded:
        return new_histogram()
    return HdrHistogram.decode(encoded)


def recorded_values_ms(hist: HdrHistogram) -> tuple[list[float], list[int]]:
    """(value in ms, count) for every recorded bucket: the input of a weighted plot."""
    values, counts = [], []
    for item in hist.get_recorded_iterator():
        values.append(item.value_iterated_to / 1000.0)
        counts.append(item.count_at_value_iterated_to)
    return values, counts

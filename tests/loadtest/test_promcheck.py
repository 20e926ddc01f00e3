"""A real Prometheus agrees with our histogram-delta maths (about 20 s).

Skipped only when the ``prometheus`` binary is absent (Debian: apt-get install -y
prometheus). It scrapes the fake service every second; the p99 it computes with
histogram_quantile over rate()[1m] must match ours within 10 % (rate() extrapolation
differs a little between buckets, nothing more). If docker/prometheus/rules.yml exists it
is loaded, and every rule must be healthy.
"""

import math
import shutil

import pytest

from loadtest.promcheck import RULES_FILE, check_against_prometheus

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus binary not installed"),
]


def test_prometheus_p99_matches_ours(quick_service):
    res = check_against_prometheus(quick_service, ["student", "teacher"], rate=30, duration_s=4,
                                   queries=["cordless drill", "garden hose"])
    for name, row in res.per_encoder.items():
        assert not math.isnan(row["prometheus_p99_ms"]), (name, row)
        assert row["exact"], (name, row)  # same scrape, same interpolation: identical
        assert row["agree"], (name, row)  # over rate()[1m]: within 10 % or the same bucket
    assert res.agree
    assert res.prometheus_url.startswith("http://127.0.0.1:")
    # the slower encoder really is slower in both views
    assert res.per_encoder["teacher"]["harness_p99_ms"] > res.per_encoder["student"]["harness_p99_ms"]
    if RULES_FILE.is_file():
        assert res.rules_error is None, res.rules_error
        assert res.rules and all(r["health"] == "ok" for r in res.rules), res.rules

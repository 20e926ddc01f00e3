"""A real Prometheus agrees with our histogram maths (~40 s).

A throwaway `prometheus` (Debian package, installed by scripts/test.sh, which fails the run
when it cannot; a missing binary fails these tests, never skips them) scrapes the target
every second.

- On the real service (`hlm serve`, small artifact): over the raw counters Prometheus'
  histogram_quantile must equal ours exactly; over rate()[1m] (what the dashboards show) its
  p99 must match our delta's within 10 % or fall in the same bucket (the warm-up requests are
  sent before Prometheus starts, so its window and our delta hold the same requests); every
  request must be counted, and docker/prometheus/rules.yml must be healthy on the service's
  own series.
"""

import shutil
import sys
from pathlib import Path

import pytest

from loadtest.promcheck import RULES_FILE, check_against_prometheus, validate_rules

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "service"))
from http_helpers import Server  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

RATE, SECONDS = 10, 4  # well under what either encoder sustains: no request waits in a queue for long


@pytest.fixture(autouse=True)
def prometheus_installed():
    if shutil.which("prometheus") is None:
        pytest.fail("the prometheus binary is not installed (apt-get install -y prometheus; scripts/test.sh does)")


@pytest.fixture(scope="module")
def served(small_artifact, tmp_path_factory):
    srv = Server(small_artifact, tmp_path_factory.mktemp("promcheck") / "server.log", shadow_rate=0)
    try:
        srv.wait_for("/readyz")
        yield srv
    finally:
        srv.stop()


def test_prometheus_p99_matches_ours_on_the_real_service(served):
    res = check_against_prometheus(served.url, ["student", "teacher"], rate=RATE, duration_s=SECONDS,
                                   queries=["cordless drill", "garden hose", "led light bulbs"])
    assert res.prometheus_url.startswith("http://127.0.0.1:")
    assert set(res.per_encoder) == {"student", "teacher"}
    for name, row in res.per_encoder.items():
        # every request the step sent, plus its preflight (one; another per 429 it waits out)
        assert RATE * SECONDS + 1 <= row["requests"] <= RATE * SECONDS + 20, (name, row)
        assert row["exact"], (name, row)  # same scrape, same interpolation: identical
        assert row["agree"], (name, row)  # over rate()[1m]: within 10 % or the same bucket
    assert res.agree
    assert RULES_FILE.is_file() and res.rules_file == str(RULES_FILE)
    assert res.rules_error is None, res.rules_error
    assert res.rules and all(r["health"] == "ok" for r in res.rules), res.rules
    # the recording rules produce a series per encoder from the service's real metrics
    p99 = [name for name in res.recorded if "p99" in name]
    assert p99 and all({s["labels"].get("encoder") for s in res.recorded[n]} >= {"student", "teacher"} for n in p99), \
        res.recorded


def test_the_rules_are_valid_only_when_promtool_checked_them(tmp_path, monkeypatch):
    """promtool accepts the shipped rules and refuses a broken file; without promtool the
    rules are not called valid (the check used to pass silently when it was missing)."""
    assert shutil.which("promtool"), "promtool is not installed (apt-get install -y prometheus; scripts/test.sh does)"
    assert validate_rules(RULES_FILE) is None
    broken = tmp_path / "rules.yml"
    broken.write_text("groups:\n  - name: x\n    rules:\n      - record: a:b\n        expr: rate(x[1m]\n")
    assert validate_rules(broken)
    monkeypatch.setenv("PATH", str(tmp_path))  # no promtool on it
    message = validate_rules(RULES_FILE)
    assert message and "promtool is not installed" in message

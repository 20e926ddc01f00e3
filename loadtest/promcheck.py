"""Cross-check our /metrics delta maths against a real Prometheus.

Starts the ``prometheus`` binary (Debian package ``prometheus``) directly — not as a system
service — on 127.0.0.1 with a random free port, a temporary config and a temporary storage
folder; it scrapes the service every second (and loads ``docker/prometheus/rules.yml`` when
that file exists and ``promtool`` accepts it). After a short load it asks Prometheus for

    histogram_quantile(0.99, sum by (encoder, le) (rate(hlm_request_duration_seconds_bucket[1m])))

and compares the answer, per encoder, with the harness's own computation over the same
requests (two scrapes of /metrics, bucket deltas, the same interpolation). Nothing is sent
between Prometheus' first scrape and our first, nor between our last and its last, so both
count the same requests; they should agree up to Prometheus' rate() extrapolation (within
10 % or inside the same bucket).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import httpx

from loadtest.cpus import free_port, wait_ready
from loadtest.queries import load_queries
from loadtest.runner import EncoderSpec, metrics_headers, run_step
from loadtest.servermetrics import REQUEST_HISTOGRAM, delta, histogram_quantile, parse_histograms, select_sum
from loadtest.targets import check_target, endpoint

P99_QUERY = f"histogram_quantile(0.99, sum by (encoder, le) (rate({REQUEST_HISTOGRAM}_bucket[1m])))"
# The same quantile over the raw cumulative counters: no rate(), so no extrapolation, and our
# answer on the same scrape must match Prometheus' to float precision.
P99_TOTAL_QUERY = f"histogram_quantile(0.99, sum by (encoder, le) ({REQUEST_HISTOGRAM}_bucket))"
RULES_FILE = Path(__file__).resolve().parent.parent / "docker" / "prometheus" / "rules.yml"
AGREE_REL = 0.10


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def validate_rules(path: Path) -> str | None:
    """None if ``promtool check rules`` accepts ``path``, else why not (its message, or that
    promtool is not installed: rules nobody checked are not valid rules)."""
    promtool = shutil.which("promtool")
    if not promtool:
        return f"promtool is not installed, so {path} was not checked (apt-get install -y prometheus)"
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    return None if proc.returncode == 0 else (proc.stdout + proc.stderr).strip()


class PrometheusServer:
    """A throwaway Prometheus scraping one target; use as a context manager."""

    def __init__(self, target: str, *, metrics_path: str = "/metrics", scrape_interval_s: float = 1.0,
                 rules_files: Sequence[Path] = (), binary: str | None = None) -> None:
        self.target = target  # host:port
        self.metrics_path = metrics_path
        self.interval = scrape_interval_s
        self.rules_files = [Path(p) for p in rules_files]
        self.binary = binary or prometheus_binary()
        self.token = metrics_headers().get("Authorization", "").removeprefix("Bearer ") or None
        if not self.binary:
            raise FileNotFoundError("prometheus binary not found (apt-get install -y prometheus)")
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _config(self) -> str:
        # JSON strings are valid YAML scalars: safe quoting for paths and tokens.
        rules = "".join(f"  - {json.dumps(str(p))}\n" for p in self.rules_files)
        return (
            "global:\n"
            f"  scrape_interval: {self.interval:g}s\n"
            f"  evaluation_interval: {self.interval:g}s\n"
            + (f"rule_files:\n{rules}" if rules else "")
            + "scrape_configs:\n"
            "  - job_name: hlm\n"
            f"    metrics_path: {self.metrics_path}\n"
            + (f"    authorization:\n      credentials: {json.dumps(self.token)}\n" if self.token else "")
            + "    static_configs:\n"
            f"      - targets: ['{self.target}']\n"
        )

    def __enter__(self) -> "PrometheusServer":
        self._tmp = tempfile.TemporaryDirectory(prefix="hlm-prom-")
        tmp = Path(self._tmp.name)
        (tmp / "prometheus.yml").write_text(self._config())
        self.port = free_port()
        self._log = open(tmp / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h",
             "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        try:
            wait_ready(self.url + "/-/ready", 60, self.proc)
        except Exception:
            self.__exit__(None, None, None)
            raise
        return self

    def log_tail(self, n: int = 2000) -> str:
        try:
            return (Path(self._tmp.name) / "prometheus.log").read_text(errors="replace")[-n:]
        except (OSError, AttributeError):
            return ""

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()
        if self._tmp:
            self._tmp.cleanup()

    def _api(self, path: str, **params) -> dict:
        r = httpx.get(self.url + path, params=params, timeout=10.0)
        r.raise_for_status()
        doc = r.json()
        if doc.get("status") != "success":
            raise RuntimeError(f"prometheus {path}: {doc}")
        return doc["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self._api("/api/v1/query", **params)["result"]

    def scrape_count(self) -> int:
        """How many scrapes of the target Prometheus has stored so far."""
        res = self.query('count_over_time(up{job="hlm"}[1h])')
        return int(float(res[0]["value"][1])) if res else 0

    def wait_scrapes(self, n: int, timeout_s: float = 30.0) -> None:
        """Block until ``n`` more scrapes have been stored (and the target is up)."""
        start = self.scrape_count()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.scrape_count() >= start + n:
                up = self.query('up{job="hlm"}')
                if up and up[0]["value"][1] == "1":
                    return
            time.sleep(self.interval / 4)
        raise TimeoutError(f"prometheus did not scrape {self.target} {n} times in {timeout_s:.0f} s:\n{self.log_tail()}")

    def rules(self) -> list[dict]:
        out = []
        for group in self._api("/api/v1/rules").get("groups", []):
            for rule in group.get("rules", []):
                out.append({"group": group.get("name"), "name": rule.get("name"), "type": rule.get("type"),
                            "health": rule.get("health"), "last_error": rule.get("lastError") or None})
        return out


@dataclass
class PromCheckResult:
    prometheus_query: str
    prometheus_url: str | None = None  # where the throwaway Prometheus listened (loopback)
    per_encoder: dict[str, dict] = field(default_factory=dict)  # label -> harness/prometheus p99 (ms), agree
    agree: bool = False
    rules_file: str | None = None
    rules_error: str | None = None
    rules: list[dict] = field(default_factory=list)
    recorded: dict[str, list] = field(default_factory=dict)  # recording rule name -> its series now

    def to_dict(self) -> dict:
        return asdict(self)


def _encoder_hist(text: str, encoder: str):
    """The same aggregation as the PromQL queries (sum by encoder, le: all routes, statuses)."""
    return select_sum(parse_histograms(text, REQUEST_HISTOGRAM), encoder=encoder)


def _same_bucket(a_ms: float, b_ms: float, bounds: Sequence[float]) -> bool:
    """True when both values lie in the same (lower, upper] histogram bucket."""
    def index(v: float) -> int:
        return next((i for i, le in enumerate(bounds) if v <= le * 1000.0 + 1e-9), len(bounds))

    return index(a_ms) == index(b_ms)


def check_against_prometheus(
    url: str,
    encoders: Sequence["str | EncoderSpec"] = ("student", "teacher"),
    *,
    rate: float = 50.0,
    duration_s: float = 8.0,
    rules_file: Path | str | None = RULES_FILE,
    queries: Sequence[str] | None = None,
    allow_remote: bool = False,
) -> PromCheckResult:
    """Load ``url`` briefly per encoder and compare our p99 with Prometheus' (see module doc).

    The whole load must fit in Prometheus' 1-minute rate window, so ``duration_s`` times the
    number of encoders is capped at 40 s.
    """
    base = check_target(url, allow_remote=allow_remote)
    specs = [EncoderSpec.of(e) for e in encoders]
    if duration_s * len(specs) > 40:
        raise ValueError("the load must fit in the 1 m rate window: duration_s x encoders <= 40 s")
    host_port = base.split("://", 1)[1].split("/", 1)[0]
    rules: list[Path] = []
    result = PromCheckResult(P99_QUERY)
    if rules_file and Path(rules_file).is_file():
        result.rules_file = str(rules_file)
        result.rules_error = validate_rules(Path(rules_file))
        if result.rules_error is None:
            rules.append(Path(rules_file))
    queries = list(queries) if queries else load_queries()
    metrics_url = endpoint(base, "/metrics")
    # A few requests first so every series exists before Prometheus' first scrape. They are
    # sent before it starts: its rate()[1m] window then holds exactly the requests between its
    # first and last scrape, which are the ones our delta counts (warm-up requests inside the
    # window moved its p99 away from ours on a real, jittery service).
    for spec in specs:
        run_step(base, spec, min(rate, 20.0), 0.25, warmup_s=0, queries=queries, scrape_metrics=False,
                 allow_remote=allow_remote)
    with PrometheusServer(host_port, rules_files=rules) as prom:
        result.prometheus_url = prom.url
        prom.wait_scrapes(1)  # its first sample: nothing is sent between it and ``before``
        before = httpx.get(metrics_url, headers=metrics_headers(), timeout=10).text
        for spec in specs:
            run_step(base, spec, rate, duration_s, warmup_s=0, queries=queries, scrape_metrics=False,
                     allow_remote=allow_remote)
        after = httpx.get(metrics_url, headers=metrics_headers(), timeout=10).text
        prom.wait_scrapes(2)
        t_eval = time.time()
        answer = {r["metric"].get("encoder"): float(r["value"][1]) * 1000.0
                  for r in prom.query(P99_QUERY, at=t_eval)}
        totals = {r["metric"].get("encoder"): float(r["value"][1]) * 1000.0
                  for r in prom.query(P99_TOTAL_QUERY, at=t_eval)}
        ok = True
        for spec in specs:
            a, b = _encoder_hist(after, spec.metric_label), _encoder_hist(before, spec.metric_label)
            d = delta(a, b)
            ours = histogram_quantile(0.99, d) * 1000.0
            theirs = answer.get(spec.metric_label, math.nan)
            rel = abs(ours - theirs) / ours if ours and not math.isnan(theirs) else math.inf
            bounds = [le for le, _ in d.sorted_buckets() if not math.isinf(le)]
            # rate() extrapolates each bucket series slightly differently; with few requests
            # in the tail that can move the interpolated p99 within its bucket, no further.
            agree = rel <= AGREE_REL or (not math.isnan(theirs) and _same_bucket(ours, theirs, bounds))
            ours_total = histogram_quantile(0.99, a) * 1000.0
            theirs_total = totals.get(spec.metric_label, math.nan)
            exact = not math.isnan(theirs_total) and math.isclose(ours_total, theirs_total, rel_tol=1e-6)
            ok &= agree and exact
            result.per_encoder[spec.label] = {
                "requests": int(d.count), "harness_p99_ms": ours, "prometheus_p99_ms": theirs,
                "rel_diff": rel, "agree": agree,
                "harness_total_p99_ms": ours_total, "prometheus_total_p99_ms": theirs_total, "exact": exact,
            }
        result.agree = ok
        if rules:
            result.rules = prom.rules()
            for rule in result.rules:
                if rule["type"] == "recording" and rule["name"]:
                    result.recorded[rule["name"]] = [
                        {"labels": r["metric"], "value": r["value"][1]} for r in prom.query(rule["name"])]
    return result

"""End to end: `hlm serve` on the product's student (the tiny static build, trained and gated
in the session), used the way a client and Prometheus do.

Checks the online path as one piece: start-up to ready, student and teacher searches over
HTTP, the metric names and labels that the load-test harness and the Prometheus rules
rely on (a contract), and a clean stop on SIGTERM. Also: the serving code never imports
torch or transformers (the serving image has neither).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# family name (as the parser reports it) -> (type, label names)
CONTRACT = {
    "hlm_request_duration_seconds": ("histogram", {"route", "encoder", "status"}),
    "hlm_encoder_duration_seconds": ("histogram", {"encoder", "precision"}),
    "hlm_index_duration_seconds": ("histogram", {"encoder"}),
    "hlm_queue_wait_seconds": ("histogram", {"encoder"}),
    "hlm_batch_size": ("histogram", {"encoder"}),
    "hlm_queue_depth": ("gauge", {"encoder"}),
    "hlm_rejected": ("counter", {"encoder", "reason"}),
    "hlm_queries": ("counter", {"encoder"}),
    "hlm_index_size": ("gauge", set()),
    "hlm_build_info": ("gauge",  # an Info is a gauge in the text format
        {"version", "student_model", "teacher_model", "artifact_sha256", "student_precision"}),
    "hlm_shadow_overlap": ("histogram", set()),
}


def test_serving_code_imports_neither_torch_nor_transformers():
    code = (
        "import sys; import service.main, service.server, service.runtime, service.api.routes_search; "
        "from service.main import create_app; create_app(); "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hlm_serve_end_to_end(static_artifact, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HLM_")}
    env.update(PYTHONUNBUFFERED="1", HLM_SHADOW_RATE="1.0")
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hlm.cli", "serve", "--artifact", str(static_artifact), "--port", str(port)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)

        top = {}
        for encoder in ("student", "teacher"):
            r = client.post("/v1/search", json={"query": "cordless drill", "k": 5, "encoder": encoder})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["encoder"] == encoder and len(body["results"][0]["keywords"]) == 5
            assert body["timings"]["total_ms"] >= body["timings"]["encode_ms"] > 0
            top[encoder] = [h["id"] for h in body["results"][0]["keywords"]]
        assert client.post("/v1/search", json={"query": "drill", "k": 0}).status_code == 422
        info = client.get("/v1/info").json()
        assert info["status"] == "ready" and info["index"]["count"] == 2000
        assert info["encoders"]["student"]["model"].startswith("static trained by hlm distill (phase3")

        # The student search queued one shadow job on the idle teacher: wait until it has
        # landed (counted, not slept on), then read the metrics as Prometheus would.
        deadline = time.monotonic() + 60
        while True:
            r = client.get("/metrics")
            families = {f.name: f for f in text_string_to_metric_families(r.text)}
            if any(s.name == "hlm_shadow_overlap_count" and s.value >= 1 for s in families["hlm_shadow_overlap"].samples):
                break
            assert time.monotonic() < deadline, "the shadow job never landed:\n" + r.text
            time.sleep(0.1)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        for name, (kind, labels) in CONTRACT.items():
            assert name in families, f"{name} missing from /metrics"
            family = families[name]
            assert family.type == kind, (name, family.type)
            assert family.samples, f"{name} has no samples: its labels are unchecked"
            for sample in family.samples:
                assert set(sample.labels) - {"le"} == labels, (name, sample.labels)
        requests = {(s.labels["route"], s.labels["encoder"], s.labels["status"]): s.value
                    for s in families["hlm_request_duration_seconds"].samples if s.name.endswith("_count")}
        assert requests[("/v1/search", "student", "200")] == 1
        assert requests[("/v1/search", "teacher", "200")] == 1
        assert requests[("/v1/search", "none", "422")] == 1
        shadow = {s.name: s.value for s in families["hlm_shadow_overlap"].samples if not s.name.endswith("_bucket")}
        assert shadow["hlm_shadow_overlap_count"] == 1.0
        # Its value: the overlap@5 of the student's answer with the teacher's for the same query
        # (the teacher's own search above), up to one near-tie keyword.
        overlap = len(set(top["student"]) & set(top["teacher"])) / 5
        assert abs(shadow["hlm_shadow_overlap_sum"] - overlap) <= 0.2 + 1e-9, (shadow, top)
        client.close()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    text = log_path.read_text()
    assert code in (0, -signal.SIGTERM), text
    assert "ready:" in text and "shut down: queues drained" in text and "Traceback" not in text

"""Start-up, readiness, overload, departed clients, shadow traffic, shut-down, bad artifacts.

One server with a slow warm-up, a tiny teacher queue and shadow traffic on; the tests run
in file order against it (the last one shuts it down).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import threading
import time

import httpx
import pytest

from http_helpers import error_of, metrics, value

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def tight(start_server):
    """A server whose warm-up waits 3 s, with teacher batches of 1 and a queue of 4 (no time bound)."""
    srv = start_server(warmup_delay_s=3, max_batch=1, queue_size=4, shadow_rate=1.0, retry_after_s=2, max_queue_wait_ms=0, teacher_max_queue_wait_ms=0)
    srv.wait_for("/healthz")
    seen = []  # (readyz status, readyz body, search status, search error code) while loading
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        r = srv.client.get("/readyz")
        s = srv.client.post("/v1/search", json={"query": "drill"})
        seen.append((r.status_code, r.json(), s.status_code, s.json().get("error", {}).get("code")))
        if r.status_code == 200:
            break
        time.sleep(0.2)
    srv.loading = seen
    return srv


def test_not_ready_until_warm(tight):
    first, last = tight.loading[0], tight.loading[-1]
    assert first[0] == 503 and first[1]["ready"] is False and first[1]["status"] in ("loading", "warming")
    assert first[2] == 503 and first[3] == "not_ready"
    assert last[0] == 200 and last[1]["ready"] is True
    assert tight.client.post("/v1/search", json={"query": "drill"}).status_code == 200
    assert "ready:" in tight.log()


def test_overload_is_refused_at_once_with_retry_after(tight):
    async def flood():
        async with httpx.AsyncClient(base_url=tight.url, timeout=120) as client:
            return await asyncio.gather(*[
                client.post("/v1/search", json={"query": f"garden hose {i}", "encoder": "teacher"}) for i in range(24)
            ])

    before = metrics(tight)
    responses = asyncio.run(flood())
    codes = [r.status_code for r in responses]
    assert set(codes) == {200, 429} and codes.count(429) >= 10, codes
    refused = [r for r in responses if r.status_code == 429]
    assert all(r.headers["retry-after"] == "2" and error_of(r)["code"] == "queue_full" for r in refused)
    after = metrics(tight)
    labels = {"encoder": "teacher", "reason": "queue_full"}
    assert value(after, "hlm_rejected_total", **labels) - value(before, "hlm_rejected_total", **labels) == codes.count(429)
    labels = {"route": "/v1/search", "encoder": "teacher", "status": "429"}
    assert value(after, "hlm_request_duration_seconds_count", **labels) - value(
        before, "hlm_request_duration_seconds_count", **labels) == codes.count(429)
    # Still serving, the student never waited behind the teacher's queue.
    assert tight.client.post("/v1/search", json={"query": "drill"}).status_code == 200


def test_a_departed_client_is_not_computed(tight):
    labels = {"encoder": "teacher", "reason": "client_gone"}
    before = value(metrics(tight), "hlm_rejected_total", **labels)

    async def main():
        async with httpx.AsyncClient(base_url=tight.url, timeout=120) as client:
            busy = [asyncio.ensure_future(client.post("/v1/search", json={
                "queries": ["cordless drill"] * 16, "encoder": "teacher"})) for _ in range(2)]
            # Wait until one busy request is computing and the other is queued behind it.
            for _ in range(600):
                if value(metrics(tight), "hlm_queue_depth", encoder="teacher") >= 1:
                    break
                await asyncio.sleep(0.01)
            async with httpx.AsyncClient(base_url=tight.url, timeout=0.1) as impatient:
                gone = await asyncio.gather(*[impatient.post("/v1/search", json={"query": f"paint {i}", "encoder": "teacher"})
                                              for i in range(2)], return_exceptions=True)
            await asyncio.gather(*busy)
            return gone

    gone = asyncio.run(main())
    left = sum(isinstance(g, httpx.TimeoutException) for g in gone)
    assert left >= 1, gone
    deadline = time.monotonic() + 30
    while value(metrics(tight), "hlm_rejected_total", **labels) - before < left and time.monotonic() < deadline:
        time.sleep(0.1)
    assert value(metrics(tight), "hlm_rejected_total", **labels) - before == left, gone


def test_shadow_overlap_is_exported(tight):
    before = value(metrics(tight), "hlm_shadow_overlap_count")
    for query in ["cordless drill", "led bulb", "paint roller"]:
        r = tight.client.post("/v1/search", json={"query": query, "k": 10})
        assert r.status_code == 200
        time.sleep(0.3)  # let the teacher take the shadow job (it is dropped when the teacher is busy)
    deadline = time.monotonic() + 30
    while value(metrics(tight), "hlm_shadow_overlap_count") == before and time.monotonic() < deadline:
        time.sleep(0.1)
    after = metrics(tight)
    count = value(after, "hlm_shadow_overlap_count") - before
    assert count >= 1
    assert 0 <= value(after, "hlm_shadow_overlap_sum") <= value(after, "hlm_shadow_overlap_count")


def test_shutdown_finishes_in_flight_requests(tight):
    result = {}

    def slow_request():
        with httpx.Client(base_url=tight.url, timeout=120) as client:
            result["response"] = client.post("/v1/search", json={"queries": ["wood screws"] * 12, "encoder": "teacher"})

    thread = threading.Thread(target=slow_request)
    thread.start()
    time.sleep(0.3)  # the request is being computed (12 teacher encodings)
    tight.proc.send_signal(signal.SIGTERM)
    thread.join(120)
    response = result["response"]
    assert response.status_code == 200 and len(response.json()["results"]) == 12
    assert tight.proc.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean shut-down
    log = tight.log()
    assert "shut down: queues drained" in log and "Traceback" not in log


def test_a_corrupted_artifact_stops_start_up_with_one_sentence(start_server, small_artifact, tmp_path):
    bad = tmp_path / "bad"
    for path in small_artifact.rglob("*"):
        if path.is_file():
            target = bad / path.relative_to(small_artifact)
            target.parent.mkdir(parents=True, exist_ok=True)
            if path.name == "keywords.tsv":
                shutil.copy(path, target)
            else:  # hard links, not symlinks: verify refuses files that lead outside the folder
                os.link(path, target)
    data = bytearray((bad / "index/keywords.tsv").read_bytes())
    data[-2] = ord("X") if data[-2] != ord("X") else ord("Y")  # same size, different bytes
    (bad / "index/keywords.tsv").write_bytes(bytes(data))

    srv = start_server(artifact=bad)
    assert srv.proc.wait(120) == 2
    log = srv.log()
    assert "Start-up stopped: Artifact file index/keywords.tsv does not match its sha256" in log
    assert "Traceback" not in log


def test_an_artifact_below_the_gate_stops_start_up_with_one_sentence(start_server, unservable_artifact):
    """`hlm serve` on what `hlm build` (gate enforced) marked not servable: exit 2, one sentence, nothing loaded."""
    import json

    message = json.loads((unservable_artifact / "manifest.json").read_text())["gate"]["message"]
    srv = start_server(artifact=unservable_artifact)
    assert srv.proc.wait(120) == 2
    log = srv.log()
    assert (f"Start-up stopped: The artifact in {unservable_artifact} is marked not servable in its manifest: "
            f"{message}.") in log
    assert "ready:" not in log and "Traceback" not in log


def test_serving_below_the_gate_is_logged_at_start_up(tight, small_artifact):
    """The suite's artifact was built with --allow-below-gate: the service said so at start-up."""
    import json

    message = json.loads((small_artifact / "manifest.json").read_text())["gate"]["message"]
    assert f"serving below the quality gate (the builder overrode it): {message}" in tight.log()


def test_a_missing_artifact_stops_start_up(start_server, tmp_path):
    srv = start_server(artifact=tmp_path / "nothing-here")
    assert srv.proc.wait(120) == 2
    log = srv.log()
    assert "does not exist" in log and "Traceback" not in log


def test_a_model_that_cannot_load_stops_the_server(start_server):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA: provider=cuda would load")
    srv = start_server(provider="cuda")
    assert srv.proc.wait(120) == 2
    log = srv.log()
    assert "start-up stopped: RuntimeError: HLM_PROVIDER=cuda but this onnxruntime has no CUDAExecutionProvider." in log
    assert "Traceback" not in log

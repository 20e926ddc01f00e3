"""Artifact swap with no downtime, under load; a bad new artifact is refused; SIGHUP; tokens never logged.

The server serves a symlink. Artifact B differs from A only in its keyword texts
(prefixed "B: "), so every answer shows which artifact produced it: an answer mixing
the two, or any failed request, would be a half-swapped state.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest

from http_helpers import metrics, value

from .conftest import TOKEN, clone_artifact, rewrite_manifest, swap_tokenizer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

QUERIES = ["cordless drill", "garden hose", "led light bulbs", "wood screws", "paint roller", "ceiling fan"]


def point(link, target) -> None:
    """Re-point the symlink atomically (what an operator's deploy does)."""
    tmp = link.with_name(link.name + ".new")
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


@pytest.fixture(scope="module")
def artifacts(small_artifact, tmp_path_factory):
    root = tmp_path_factory.mktemp("swap")
    a = small_artifact
    b = clone_artifact(a, root / "B", copy=("index/keywords.tsv",))
    lines = (b / "index/keywords.tsv").read_text(encoding="utf-8").splitlines()
    rows = [lines[0]] + [f"{row_id}\tB: {text}" for row_id, _, text in (line.partition("\t") for line in lines[1:])]
    (b / "index/keywords.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    rewrite_manifest(b, ("index/keywords.tsv",))
    bad = swap_tokenizer(a, root / "bad")
    link = root / "current"
    os.symlink(a, link)
    return {"A": a, "B": b, "bad": bad, "link": link}


@pytest.fixture(scope="module")
def srv(start_server, artifacts):
    # The load below is a steady 100 requests/s, well under what the server sustains. The
    # reload's loading still takes CPU from it for a moment, and with the student's 5 ms
    # default budget that refused 0-1 of ~300 requests per swap (1-3 before the reload ran
    # at low priority; docs/RELIABILITY.md). This test checks the swap itself, so it runs
    # with no admission time bound: a 50 ms one still refused a request now and then on a
    # machine busy with other work, which says nothing about the swap.
    server = start_server(artifact=artifacts["link"], admin_token=TOKEN, access_log="true", log_level="debug",
                          max_queue_wait_ms=0)
    server.wait_for("/readyz")
    server.client.headers["Authorization"] = f"Bearer {TOKEN}"
    return server


def sha(server) -> str:
    return server.client.get("/v1/info").json()["artifact"]["sha256"]


def served_kind(server) -> str:
    """Which artifact answers now, "A" or "B" (B's keyword texts start with "B: "), so each
    test starts from whatever the previous one left: they pass in any order, or alone."""
    hits = server.client.post("/v1/search", json={"query": "drill", "k": 10}).json()["results"][0]["keywords"]
    kinds = {"B" if h["text"].startswith("B: ") else "A" for h in hits}
    assert len(kinds) == 1, hits
    return kinds.pop()


def reloads(server, result: str) -> float:
    return value(metrics(server), "hlm_reloads_total", result=result)


def under_load(server, action, workers: int = 4, rate: float = 100.0, max_requests: int = 3000, max_s: float = 90.0):
    """Run ``action()`` in a thread while ``workers`` clients send student searches at
    ``rate`` requests/s in all (a steady load, well under what the server sustains);
    bounded in count and time.

    Returns (action's result, [(sent_at, status, kinds of keyword texts)], when the action returned).
    """
    records = []
    done = asyncio.Event()
    interval = workers / rate

    async def client_loop(client, i):
        n = 0
        next_at = time.monotonic() + i * interval / workers
        while not done.is_set() and len(records) < max_requests:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += interval
            sent = time.monotonic()
            try:
                r = await client.post("/v1/search", json={"query": QUERIES[(i + n) % len(QUERIES)], "k": 10})
                kinds = {"B" if h["text"].startswith("B: ") else "A" for res in r.json().get("results", [])
                         for h in res["keywords"]} if r.status_code == 200 else set()
                records.append((sent, r.status_code, kinds))
            except httpx.HTTPError as exc:
                records.append((sent, type(exc).__name__, set()))
            n += 1

    async def main():
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            loops = [asyncio.create_task(client_loop(client, i)) for i in range(workers)]
            await asyncio.sleep(0.5)
            result = await asyncio.wait_for(asyncio.to_thread(action), max_s)
            returned = time.monotonic()
            await asyncio.sleep(0.5)
            done.set()
            await asyncio.gather(*loops)
            return result, returned

    result, returned = asyncio.run(main())
    return result, records, returned


def test_reload_swaps_under_load_without_a_failed_or_mixed_answer(srv, artifacts):
    old_sha, old = sha(srv), served_kind(srv)
    new = "B" if old == "A" else "A"
    ok_before = reloads(srv, "ok")
    point(artifacts["link"], artifacts[new])
    response, records, returned = under_load(srv, lambda: srv.client.post("/admin/reload"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "reloaded" and body["previous_sha256"] == old_sha and body["artifact_sha256"] != old_sha
    statuses = [status for _, status, _ in records]
    assert len(records) > 20 and set(statuses) == {200}, statuses
    assert all(len(kinds) == 1 for _, _, kinds in records)  # never half A, half B
    assert {"A", "B"} <= set().union(*(kinds for _, _, kinds in records))
    assert all(kinds == {new} for sent, _, kinds in records if sent > returned)
    assert sha(srv) == body["artifact_sha256"]
    samples = metrics(srv)
    assert value(samples, "hlm_reloads_total", result="ok") - ok_before == 1
    info = [labels for (name, labels) in samples if name == "hlm_build_info"]
    assert dict(info[0])["artifact_sha256"] == body["artifact_sha256"]


def test_a_bad_new_artifact_is_refused_and_the_old_one_keeps_serving(srv, artifacts):
    before, kind = sha(srv), served_kind(srv)
    refused_before = reloads(srv, "refused")
    point(artifacts["link"], artifacts["bad"])
    response, records, _ = under_load(srv, lambda: srv.client.post("/admin/reload"))
    assert response.status_code == 409, response.text
    message = response.json()["error"]["message"]
    assert message.startswith(f"Reload refused, still serving artifact {before[:12]}: The student tokenizer")
    assert "\n" not in message
    assert set(status for _, status, _ in records) == {200}
    assert all(kinds == {kind} for _, _, kinds in records)
    assert sha(srv) == before and srv.client.get("/readyz").status_code == 200
    assert reloads(srv, "refused") - refused_before == 1
    assert "reload refused, still serving" in srv.log()
    point(artifacts["link"], artifacts[kind])  # leave the link on what is served


def test_sighup_reloads_the_configured_folder(srv, artifacts):
    new = "B" if served_kind(srv) == "A" else "A"
    ok_before = reloads(srv, "ok")
    point(artifacts["link"], artifacts[new])
    srv.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 90
    while reloads(srv, "ok") - ok_before < 1:  # counted, whatever the reload's duration
        if time.monotonic() > deadline:
            pytest.fail("SIGHUP did not reload within 90 s:\n" + srv.log()[-3000:])
        time.sleep(0.3)
    assert reloads(srv, "ok") - ok_before == 1
    assert srv.client.get("/v1/info").json()["artifact"]["resolved"] == str(artifacts[new].resolve())
    assert served_kind(srv) == new
    assert srv.proc.poll() is None


def test_the_token_never_reaches_the_log(srv):
    srv.client.get("/metrics", headers={"Authorization": "Bearer not-the-token"})
    log = srv.log()
    assert "GET /metrics" in log or "POST /admin/reload" in log  # the access log is on
    assert TOKEN not in log

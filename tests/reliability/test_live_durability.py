"""Live keywords under crashes: kill -9 during a stream of upserts, a torn last log record,
and queries at a steady rate while keywords are ingested.

Every change the service acknowledged (200) must be there after a restart; a record torn by
the crash (never acknowledged) is dropped with a log line, never a failed start.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest

from service.live.wal import Change, read_records

TOKEN = "live-durability-token-90ab"
pytestmark = pytest.mark.slow


def start(start_server, state_dir, **extra):
    srv = start_server(admin_token=TOKEN, state_dir=state_dir, shadow_rate=0, max_queue_wait_ms=0,
                       teacher_max_queue_wait_ms=0, snapshot_every=1000, **extra)
    srv.wait_for("/readyz")
    srv.client.headers["Authorization"] = f"Bearer {TOKEN}"
    return srv


class Writer(threading.Thread):
    """Upserts 3 keywords a request (and deletes an earlier one every third request) until it fails."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.client = httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"})
        self.acked: dict[str, str] = {}  # id -> text, acknowledged upserts
        self.deleted: set[str] = set()  # acknowledged deletes
        self.sent = 0
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            ids = [f"ack:{n}:{j}" for j in range(3)]
            texts = [f"crash test keyword {n} variant {j} cordless" for j in range(3)]
            delete = [f"ack:{n - 3}:0"] if n % 3 == 0 and n >= 3 else []
            self.sent += 1
            try:
                r = self.client.post("/admin/keywords", json={
                    "upsert": [{"id": i, "text": t, "attributes": {"batch": n}} for i, t in zip(ids, texts)],
                    "delete": delete})
            except httpx.TransportError:
                return
            if r.status_code != 200:
                return
            self.acked.update(zip(ids, texts))
            for kid in delete:
                self.acked.pop(kid, None)
                self.deleted.add(kid)
            n += 1


def test_kill_9_during_upserts_loses_no_acknowledged_change_and_a_torn_record_is_dropped(start_server, tmp_path):
    state = tmp_path / "state"
    srv = start(start_server, state)
    writer = Writer(srv.url)
    writer.start()
    deadline = time.monotonic() + 120
    while len(writer.acked) < 30 and writer.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(writer.acked) >= 30, srv.log()
    os.kill(srv.proc.pid, signal.SIGKILL)  # mid-stream: the writer has a request in flight
    writer.join(30)
    srv.proc.wait(30)
    srv.stop()
    acked, deleted = dict(writer.acked), set(writer.deleted)

    again = start(start_server, state)
    for kid, text in acked.items():
        r = again.client.get(f"/admin/keywords/{kid}")
        assert r.status_code == 200 and r.json()["text"] == text, (kid, r.text)
    for kid in deleted:
        assert again.client.get(f"/admin/keywords/{kid}").status_code == 404
    probe = sorted(acked)[:10]
    r = again.client.post("/v1/search", json={"queries": [acked[k] for k in probe], "k": 1, "encoder": "teacher"})
    assert [res["keywords"][0]["id"] for res in r.json()["results"]] == probe
    print(f"kill -9: {writer.sent} changes sent, {len(acked)} acknowledged upserts and {len(deleted)} deletes, "
          f"all {len(acked) + len(deleted)} there after the restart")

    # Now tear the log's last record as a crash mid-append would, and start again.
    os.kill(again.proc.pid, signal.SIGKILL)
    again.proc.wait(30)
    again.stop()
    log_path = state / "wal.log"
    data = log_path.read_bytes()
    payloads, end, _ = read_records(data)
    assert end == len(data) and len(payloads) >= 10
    last_start = end - 8 - len(payloads[-1])
    with open(log_path, "r+b") as handle:
        handle.truncate(last_start + 8 + len(payloads[-1]) // 2)
    torn = Change.decode(payloads[-1])
    third = start(start_server, state)
    assert "dropped a torn record" in third.log() and "never acknowledged" in third.log()
    for kid in torn.upsert_ids:
        assert third.client.get(f"/admin/keywords/{kid}").status_code == 404
    kept = Change.decode(payloads[-2])
    for kid in kept.upsert_ids:
        assert third.client.get(f"/admin/keywords/{kid}").status_code == 200
    # And it takes new changes after the cut-back log.
    r = third.client.post("/admin/keywords", json={"upsert": [{"id": "after:1", "text": "after the tear"}]})
    assert r.status_code == 200 and r.json()["sequence"] == torn.sequence
    print(f"torn record: {len(payloads)} records, the last cut at half its {len(payloads[-1])} bytes; "
          f"start-up kept {len(payloads) - 1}, dropped 1")
    third.stop()


def test_queries_at_a_steady_rate_during_ingest_get_no_errors(start_server, tmp_path):
    srv = start(start_server, tmp_path / "state")
    statuses: list[int] = []
    done = threading.Event()

    def query_at_a_steady_rate() -> None:
        client = httpx.Client(base_url=srv.url, timeout=30)
        queries = ["cordless drill", "garden hose", "led bulb", "paint roller", "oak cabinet"]
        n, t0 = 0, time.monotonic()
        while not done.is_set():
            try:
                body = {"query": queries[n % 5], "k": 10}
                if n % 2:  # every other one filtered
                    body["filter"] = {"source": "hd"}
                r = client.post("/v1/search", json=body)
                statuses.append(r.status_code)
            except httpx.TransportError:
                statuses.append(-1)
            n += 1
            time.sleep(max(0.0, t0 + n / 20.0 - time.monotonic()))  # 20 queries a second, open loop

    thread = threading.Thread(target=query_at_a_steady_rate, daemon=True)
    thread.start()
    for batch in range(10):
        items = [{"id": f"steady:{batch}:{j}", "text": f"steady ingest keyword {batch} {j} brass faucet"}
                 for j in range(20)]
        r = srv.client.post("/admin/keywords", json={"upsert": items, "delete": [f"steady:{batch - 1}:0"]})
        assert r.status_code == 200, r.text
    done.set()
    thread.join(30)
    assert statuses and all(s == 200 for s in statuses), {s: statuses.count(s) for s in set(statuses)}
    print(f"steady queries during ingest of 200 keywords: {len(statuses)} answered, all 200")


def test_a_log_damaged_before_its_last_record_stops_start_up_with_one_sentence(start_server, tmp_path):
    import numpy as np

    from service.live.wal import Wal

    state = tmp_path / "state"
    state.mkdir()
    wal, _ = Wal.open(state / "wal.log")
    vector = np.ones((1, 768), dtype=np.float32) / np.sqrt(768)
    wal.append(Change(1, "t", ["kw:1"], ["first"], [{}], vector, []))
    first_end = wal.size
    wal.append(Change(2, "t", ["kw:2"], ["second"], [{}], vector, []))
    wal.close()
    data = bytearray((state / "wal.log").read_bytes())
    data[first_end - 10] ^= 0xFF
    (state / "wal.log").write_bytes(bytes(data))
    srv = start_server(admin_token=TOKEN, state_dir=state)
    assert srv.proc.wait(120) == 2
    log = srv.log()
    assert "acknowledged changes are damaged" in log and "Traceback" not in log

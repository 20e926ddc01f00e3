"""`hlm compact` while the service keeps taking live keyword writes (POST /admin/keywords).

A real `hlm serve` on the product's artifact with a state folder; a writer sends one upsert
after another, each acknowledged with its sequence number, before, during and after a real
`hlm compact` run on the same state folder (it reads it without taking it). The compacted
artifact must hold exactly the changes up to the sequence it says it folded (a prefix: none
after it, none missing before it, everything acknowledged before compact started among
them); served after a reload, with the state replayed onto it, every acknowledged change is
there, and writes go on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import httpx
import pytest

from artifact.manifest import verify

from .conftest import TOKEN

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def text_of(i: int) -> str:
    return f"walnut shelf bracket model {i}"


def test_writes_go_on_while_compact_runs_and_nothing_acknowledged_is_lost(start_server, static_artifact, tmp_path):
    link = tmp_path / "current"
    os.symlink(static_artifact, link)
    state = tmp_path / "state"
    srv = start_server(link, admin_token=TOKEN, state_dir=state, shadow_rate=0, max_queue_wait_ms=0,
                       teacher_max_queue_wait_ms=0)
    srv.wait_for("/readyz")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    acks: list[tuple[int, int, float]] = []  # (i, sequence, acknowledged at)
    failures: list = []
    stop = threading.Event()

    def writer() -> None:
        i = 0
        with httpx.Client(base_url=srv.url, timeout=120, headers=headers) as client:
            while not stop.is_set():
                r = client.post("/admin/keywords", json={"upsert": [{"id": f"kw:w{i}", "text": text_of(i)}]})
                if r.status_code == 200:
                    acks.append((i, r.json()["sequence"], time.monotonic()))
                else:
                    failures.append((i, r.status_code, r.text[:300]))
                i += 1

    def wait_acks(n: int, what: str) -> None:
        deadline = time.monotonic() + 240
        while len(acks) < n:
            assert time.monotonic() < deadline and not failures, (what, failures)
            time.sleep(0.02)

    thread = threading.Thread(target=writer)
    thread.start()
    out = tmp_path / "compacted"
    try:
        wait_acks(3, "the first writes")
        started = time.monotonic()
        compact = subprocess.run([sys.executable, "-m", "hlm.cli", "compact", "--artifact", str(link),
                                  "--state-dir", str(state), "--out", str(out)],
                                 cwd=REPO, capture_output=True, text=True, timeout=400)
        ended = time.monotonic()
        wait_acks(len(acks) + 3, "writes after compact")
    finally:
        stop.set()
        thread.join(120)
    assert compact.returncode == 0, compact.stdout[-2000:] + compact.stderr[-2000:]
    assert not failures, failures
    during = [a for a in acks if started < a[2] < ended]
    print(f"\n{len(acks)} writes acknowledged, {len(during)} while compact ran")
    assert during, "no write was acknowledged while compact ran"

    folded = verify(out)
    upto = folded["live"]["folded_sequence"]
    store = (out / folded["index"]["store"]).read_text(encoding="utf-8").splitlines()[1:]
    ids = {line.split("\t", 1)[0] for line in store}
    written = {f"kw:w{i}": seq for i, seq, _ in acks}
    assert sorted(written.values()) == list(range(1, len(acks) + 1))  # one sequence each, in order
    assert max(seq for _, seq, at in acks if at < started) <= upto  # acknowledged before: folded
    assert {kid for kid, seq in written.items() if seq <= upto} <= ids  # a prefix: nothing missing...
    assert not {kid for kid, seq in written.items() if seq > upto} & ids  # ...and nothing after it
    assert len(ids) == folded["index"]["count"] == verify(static_artifact)["index"]["count"] + upto

    # Served after a reload onto it (the state replayed on top): every acknowledged change.
    tmp = tmp_path / "current.new"
    os.symlink(out, tmp)
    os.replace(tmp, link)
    reload = srv.client.post("/admin/reload", headers=headers, timeout=400)
    assert reload.status_code == 200, reload.text
    for i, _, _ in acks:
        got = srv.client.get(f"/admin/keywords/kw:w{i}", headers=headers)
        assert got.status_code == 200 and got.json()["text"] == text_of(i), got.text
    more = srv.client.post("/admin/keywords", headers=headers,
                           json={"upsert": [{"id": "kw:after", "text": "oak cabinet after compact"}]})
    assert more.status_code == 200 and more.json()["sequence"] == len(acks) + 1, more.text

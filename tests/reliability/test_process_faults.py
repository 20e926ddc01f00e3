"""`hlm serve --workers N` under process faults (issue #28: 2, 7, 10), all for real.

- As pid 1 (a container without an init: `unshare -pf --mount-proc`), the workers used to see
  getppid() == 1, take it for a dead supervisor and stop: the service never started. They
  now compare their parent with the pid their supervisor gave them.
- A worker that dies is replaced by one serving what it served (its resolved folder and
  artifact_sha256), not whatever the configured path points at by then (a roll's job); a
  replacement that cannot start is retried while the others serve, where it used to stop
  the whole service.
- A second `hlm serve --workers` on the same port, loading or serving, or any other listener
  sharing the port through SO_REUSEPORT, makes the new one exit 2 with one sentence; it used to
  take a silent share of the connections.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from http_helpers import REPO, free_port

from .conftest import TOKEN, clone_artifact, rewrite_manifest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def wait_until(predicate, what: str, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.2)
    return value


def fresh(url: str, method: str, path: str, **kwargs) -> httpx.Response:
    """One request on a connection of its own (a kept-alive one stays with one worker)."""
    with httpx.Client(base_url=url, timeout=60) as client:
        return client.request(method, path, **kwargs)


def answering(url: str, n: int = 24) -> dict[int, str]:
    """pid -> the artifact sha256 it serves, from /v1/info answers to a burst of fresh connections."""
    async def one(client_factory):
        async with client_factory() as client:
            try:
                return await client.get("/v1/info", headers=AUTH)
            except httpx.TransportError:
                return None

    async def all_():
        return await asyncio.gather(*[one(lambda: httpx.AsyncClient(base_url=url, timeout=60)) for _ in range(n)])

    seen = {}
    for r in asyncio.run(all_()):
        if r is not None and r.status_code == 200:
            seen[r.json()["process"]["pid"]] = r.json()["artifact"]["sha256"]
    return seen


def workers_answering(url: str, want: int = 2, rounds: int = 10) -> dict[int, str]:
    seen: dict[int, str] = {}
    for _ in range(rounds):
        seen |= answering(url)
        if len(seen) >= want:
            break
    return seen


def kind(url: str) -> str:
    """Which artifact answered, "A" or "B" (B's keyword texts start with "B: ")."""
    hits = fresh(url, "POST", "/v1/search", json={"query": "drill", "k": 10}).json()["results"][0]["keywords"]
    kinds = {"B" if h["text"].startswith("B: ") else "A" for h in hits}
    assert len(kinds) == 1, hits
    return kinds.pop()


def point(link: Path, target: Path) -> None:
    tmp = link.with_name(link.name + ".new")
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def hlm_serve(port: int, artifact: Path, *extra: str, **settings) -> subprocess.CompletedProcess:
    """`hlm serve` expected to refuse at once (a refusal takes seconds; 60 s means it serves)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HLM_")}
    env.update({f"HLM_{key.upper()}": str(value) for key, value in settings.items()})
    try:
        return subprocess.run([sys.executable, "-m", "hlm.cli", "serve", "--artifact", str(artifact), "--port",
                               str(port), *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"hlm serve did not refuse the port within 60 s: it serves beside the other one\n{exc.stdout}")


# ---- 2: pid 1 ----

def unshare_prefix() -> list[str]:
    """A new pid namespace: as root directly, else inside a user namespace; None if neither works."""
    for prefix in (["unshare", "-pf", "--mount-proc"], ["unshare", "-Urpf", "--mount-proc"]):
        if shutil.which("unshare") and subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    pytest.skip("unshare cannot make a pid namespace here (needs root or unprivileged user namespaces)")


def test_workers_start_serve_and_stop_as_pid_1(small_artifact, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HLM_")} | {
        "HLM_ADMIN_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1", "HLM_SHADOW_RATE": "0"}
    log_path = tmp_path / "pid1.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([*unshare_prefix(), sys.executable, "-m", "hlm.cli", "serve", "--workers", "2",
                                 "--artifact", str(small_artifact), "--port", str(port)],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            assert proc.poll() is None, f"exited {proc.returncode}:\n{log_path.read_text()}"
            try:
                return fresh(url, "GET", "/readyz").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, "ready as pid 1")
        pids = wait_until(lambda: len(seen := workers_answering(url)) == 2 and seen, "both workers answering")
        # inside the namespace: the supervisor is pid 1, so the workers' parent is pid 1
        assert all(pid > 1 for pid in pids)
        # the namespace's pid 1 is unshare's child; SIGTERM to it (a handler is installed)
        init = int(Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()[0])
        os.kill(init, signal.SIGTERM)
        assert proc.wait(120) == 0, log_path.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = log_path.read_text()
    assert "stopped before serving" not in log and "Traceback" not in log
    assert log.count("shut down: queues drained") == 2


# ---- 7: replacements ----

@pytest.fixture()
def swap(small_artifact, tmp_path):
    """A (hard links to the small artifact, so a test can take a file away), B (keyword texts
    prefixed "B: "), and a symlink to A."""
    a = clone_artifact(small_artifact, tmp_path / "A")
    b = clone_artifact(small_artifact, tmp_path / "B", copy=("index/keywords.tsv",))
    lines = (b / "index/keywords.tsv").read_text(encoding="utf-8").splitlines()
    rows = [lines[0]] + [f"{row_id}\tB: {text}" for row_id, _, text in (line.partition("\t") for line in lines[1:])]
    (b / "index/keywords.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    rewrite_manifest(b, ("index/keywords.tsv",))
    link = tmp_path / "current"
    os.symlink(a, link)
    return {"A": a, "B": b, "link": link}


def two_workers(start_server, artifact):
    srv = start_server(artifact=artifact, workers=2, admin_token=TOKEN, shadow_rate=0, max_queue_wait_ms=0)
    srv.wait_for("/readyz", timeout=300)
    pids = wait_until(lambda: len(seen := workers_answering(srv.url)) == 2 and seen, "both workers answering")
    return srv, pids


def test_a_replacement_serves_what_the_others_serve_not_where_the_link_points_now(start_server, swap):
    srv, pids = two_workers(start_server, swap["link"])
    served = set(pids.values())
    point(swap["link"], swap["B"])  # re-pointed, no roll asked for
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    now = wait_until(lambda: len(seen := workers_answering(srv.url)) == 2 and victim not in seen and seen,
                     "a replacement beside the survivor", timeout=300)
    assert set(now.values()) == served, now  # one artifact served, the one served before
    assert {kind(srv.url) for _ in range(16)} == {"A"}
    assert srv.proc.poll() is None
    # a roll is what moves the workers onto the re-pointed folder
    srv.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "roll done: 2 workers" in srv.log(), "the roll", timeout=300)
    assert {kind(srv.url) for _ in range(16)} == {"B"}
    assert srv.stop(timeout=90) == 0


def test_a_replacement_that_cannot_start_does_not_take_the_service_down(start_server, swap, small_artifact):
    srv, pids = two_workers(start_server, swap["link"])
    taken = "student/tokenizer.json"
    os.unlink(swap["A"] / taken)  # the folder the workers serve loses a file (A's are hard links)
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    def failed_replacement(times: int) -> bool:
        assert srv.proc.poll() is None, "the supervisor stopped:\n" + srv.log()[-3000:]
        return srv.log().count("a replacement, stopped before serving") >= times

    wait_until(lambda: failed_replacement(1), "the replacement's failure")
    # The survivor goes on serving; the supervisor stays and tries again.
    assert srv.proc.poll() is None
    survivor = set(pids) - {victim}
    for _ in range(8):
        r = fresh(srv.url, "POST", "/v1/search", json={"query": "cordless drill"})
        assert r.status_code == 200
    assert set(workers_answering(srv.url, want=1)) == survivor
    wait_until(lambda: failed_replacement(2), "a second try")
    assert srv.proc.poll() is None
    os.link(small_artifact / taken, swap["A"] / taken)  # the file is back: a later try serves
    now = wait_until(lambda: len(seen := workers_answering(srv.url)) == 2 and seen, "two workers again", timeout=400)
    assert survivor < set(now) and victim not in now
    assert "stopping all workers" not in srv.log()
    assert srv.stop(timeout=90) == 0


# ---- 10: one instance per port ----

def test_a_second_workers_instance_on_the_same_port_exits_2(start_server, small_artifact):
    srv, pids = two_workers(start_server, small_artifact)
    second = hlm_serve(srv.port, small_artifact, "--workers", "2", admin_token=TOKEN)
    out = (second.stdout + second.stderr).strip()
    assert second.returncode == 2, out
    assert "another hlm serve --workers already serves port" in out and "Traceback" not in out
    assert len(out.splitlines()) == 1, out
    assert set(workers_answering(srv.url)) == set(pids)  # the first one's workers alone
    assert srv.stop(timeout=90) == 0


def test_a_second_instance_is_refused_while_the_first_is_still_loading(start_server, small_artifact):
    # The first one's workers wait 20 s before warming up: nothing listens on the port yet. (A
    # refusal takes 2-3 s; the first cannot stop before its delay ends, so longer costs CI time.)
    first = start_server(artifact=small_artifact, workers=2, warmup_delay_s=20)
    wait_until(lambda: "workers on http://" in first.log(), "the first supervisor up")
    second = hlm_serve(first.port, small_artifact, "--workers", "2")
    out = (second.stdout + second.stderr).strip()
    assert second.returncode == 2 and "another hlm serve --workers already serves port" in out, out
    assert first.proc.poll() is None
    first.stop(timeout=90)


def test_a_foreign_listener_sharing_the_port_is_refused(small_artifact):
    with socket.socket() as other:  # another server of this user, listening with SO_REUSEPORT
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        done = hlm_serve(port, small_artifact, "--workers", "2")
    out = (done.stdout + done.stderr).strip()
    assert done.returncode == 2, out
    assert f"something already listens on 127.0.0.1:{port}" in out and len(out.splitlines()) == 1, out

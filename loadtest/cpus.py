"""Keeping the generator and the server off each other's cores, and launching a server.

On a 2-core machine a generator that shares the server's core steals exactly the CPU the
server needs at saturation, and the measured capacity becomes a property of the pair. So
when there are 2+ usable cores, the server gets all but the last one and the generator gets
the last one. With a single core nothing is pinned and the report says so.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import httpx


@dataclass
class CpuPlan:
    server: list[int]
    generator: list[int]
    pinned: bool
    note: str

    def to_dict(self) -> dict:
        return asdict(self)


def available_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def plan_cpus(cpus: Sequence[int] | None = None) -> CpuPlan:
    """Split the usable cores: server gets all but the last, the generator the last."""
    cpus = sorted(cpus) if cpus is not None else available_cpus()
    if len(cpus) >= 2:
        return CpuPlan(cpus[:-1], cpus[-1:], True,
                       f"server pinned to CPU {','.join(map(str, cpus[:-1]))}; generator pinned to CPU {cpus[-1]}")
    return CpuPlan(list(cpus), list(cpus), False, "only one usable core: server and generator share it (not pinned)")


def parse_cpu_list(text: str) -> list[int]:
    """``"0,2-3"`` -> [0, 2, 3] (taskset's list syntax)."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-")
            out.extend(range(int(lo), int(hi) + 1))
        else:
            out.append(int(part))
    return sorted(set(out))


@contextmanager
def pinned(cpus: Sequence[int] | None) -> Iterator[None]:
    """Pin *this* process (the generator) to ``cpus`` for the block, then restore."""
    if not cpus:
        yield
        return
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(cpus))
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout_s: float = 120.0, proc: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers 200; fail early if ``proc`` died."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before it was ready ({url})")
        try:
            r = httpx.get(url, timeout=2.0)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout_s:.0f} s (last: {last})")


@contextmanager
def launch_server(
    cmd: Sequence[str],
    *,
    ready_url: str,
    cpus: Sequence[int] | None = None,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    log_path: str | Path | None = None,
    ready_timeout_s: float = 180.0,
) -> Iterator[subprocess.Popen]:
    """Start ``cmd`` (pinned to ``cpus`` if given), wait for ``ready_url``, stop it after.

    The affinity is set in the child before exec, so every thread the server starts
    (ONNX Runtime's included) inherits it. The server is stopped with SIGTERM, then SIGKILL
    after 10 s.
    """
    cpu_set = set(cpus) if cpus else None

    def pin() -> None:
        if cpu_set:
            os.sched_setaffinity(0, cpu_set)

    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.Popen(list(cmd), env=full_env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=pin)
    try:
        wait_ready(ready_url, ready_timeout_s, proc)
        yield proc
    finally:
        stop_process(proc)
        if log is not subprocess.DEVNULL:
            log.close()


def stop_process(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within ``timeout_s``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_model_name() -> str | None:
    """The CPU's model name from /proc/cpuinfo (None where it cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None

"""A real milvus-lite for the Milvus backend's tests: embedded (a .db folder) or as a local server.

The server is the ``milvus-lite server`` command the package installs, bound to 127.0.0.1 on
a free port: the same ``http://host:port`` code path that talks to a cluster.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from artifact.manifest import read_manifest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _milvus_lite_command() -> list[str]:
    exe = Path(sys.executable).with_name("milvus-lite")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "milvus_lite"]


class LiteServer:
    """`milvus-lite server` in a child process; kill() and start() again on the same data and port."""

    def __init__(self, data_dir: Path, port: int):
        self.data_dir, self.port = data_dir, port
        self.uri = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self, wait_s: float = 60.0) -> "LiteServer":
        self.proc = subprocess.Popen(
            _milvus_lite_command() + ["server", "--data-dir", str(self.data_dir), "--host", "127.0.0.1",
                                      "--port", str(self.port), "--max-workers", "4"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"milvus-lite server exited with {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"milvus-lite server did not listen on {self.port} within {wait_s} s")

    def kill(self) -> None:
        """SIGKILL, as a crash: no goodbye to the clients."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None


@pytest.fixture(scope="session")
def artifact(small_artifact) -> Path:
    return Path(small_artifact)


@pytest.fixture(scope="session")
def manifest(artifact) -> dict:
    return read_manifest(artifact)


@pytest.fixture(scope="session")
def keywords(artifact, manifest):
    """(ids, texts, vectors) of the artifact, read as `hlm index push` reads them."""
    from retrieval.milvus import read_artifact_keywords

    return read_artifact_keywords(artifact, manifest)


@pytest.fixture(scope="session")
def lite_server(tmp_path_factory):
    server = LiteServer(tmp_path_factory.mktemp("milvus-server"), free_port()).start()
    yield server
    server.kill()
    shutil.rmtree(server.data_dir, ignore_errors=True)

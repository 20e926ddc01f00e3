"""Live keyword writes on the Milvus backend while `milvus-lite server` is killed (#28 findings 5, 6).

The writer thread asks Milvus to apply each change and to count the collection (a gauge). With
the server killed, both raise: the count used to end the writer thread (every later write
waited for ever) and the failed apply was answered "not applied" for a change already in the
log. Now the change stands (durable, numbered), the answer says it is not visible yet, the
thread lives, and the changes reach Milvus in order once it answers again.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from retrieval.milvus import MilvusIndex, push_artifact  # noqa: E402
from service.live.keywords import LiveKeywords, NotVisible  # noqa: E402
from service.live.wal import Wal  # noqa: E402
from service.metrics import Metrics  # noqa: E402
from service.runtime import ServedIndex  # noqa: E402

from .conftest import LiteServer, free_port  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "service" / "live"))
from live_fakes import FakeEncoder  # noqa: E402

pytestmark = pytest.mark.slow
HANG = 120  # bounded: a dead writer thread leaves the answer pending for ever


def test_a_killed_milvus_neither_stops_the_writer_nor_loses_a_logged_change(tmp_path, artifact, manifest):
    server = LiteServer(tmp_path / "data", free_port()).start()
    try:
        push_artifact(artifact, server.uri, "kw")
        index = ServedIndex(MilvusIndex(server.uri, "kw", dim=768, artifact_sha256=manifest["artifact_sha256"],
                                        timeout_s=2), retry_after_s=1)
        live = LiveKeywords(tmp_path / "state", Metrics(), niceness=0)
        live.attach(index, FakeEncoder(768), "teacher-sha")

        async def write(n, delete=()):
            future = live.submit([f"live:{n}"], [f"live keyword {n}"], [{"n": n}], list(delete))
            return await asyncio.wait_for(future, HANG)

        async def scenario():
            live.start(asyncio.get_running_loop())
            assert (await write(1))["sequence"] == 1
            server.kill()  # a crash: no goodbye
            for n in (2, 3):  # the second would wait for ever behind a dead writer thread
                with pytest.raises(NotVisible, match=f"sequence {n}"):
                    await write(n, delete=["live:1"] if n == 2 else ())
            assert live.get("live:3")["attributes"] == {"n": 3} and live.get("live:1") is None
            server.start()
            deadline = time.monotonic() + HANG  # bounded: gRPC reconnects within its 2 s backoff
            while not await asyncio.to_thread(index.healthy) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert (await write(4))["sequence"] == 4  # the waiting changes first, in order
            assert [await asyncio.to_thread(index.get, f"live:{n}") is not None for n in (1, 2, 3, 4)] == \
                   [False, True, True, True]
            live.close()

        asyncio.run(scenario())
        assert [c.sequence for c in Wal.open(tmp_path / "state" / "wal.log")[1]] == [1, 2, 3, 4]
        index.close()
    finally:
        server.kill()
        shutil.rmtree(tmp_path / "data", ignore_errors=True)

"""The writer thread under faults (#28 findings 3, 5, 6, 14): an index that fails after the log
write, a disk that fills during a snapshot or a log reset, a Milvus count that raises, a reload
that holds writes. Real disk faults (a tmpfs, RLIMIT_FSIZE); a fake index and encoder.

What must hold: an answer never says "not applied" for a change that is durable; a durable
change keeps its sequence number and reaches the index in order; the writer thread never dies;
the ingest queue is bounded while writes are held; nothing half-written stays on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading

import numpy as np
import pytest

import service.live.keywords as keywords_module
from retrieval.milvus import keyword_rows
from service.live.keywords import ChangeRefused, Handover, LiveKeywords, LiveUnavailable, NotVisible
from service.live.wal import Change, Wal
from service.metrics import Metrics

from disk_faults import file_size_limit, fill, pages, small_disk
from live_fakes import DictIndex, FakeEncoder

TEACHER = "teacher-sha"
HANG = 60  # bounded waits: a writer thread that died would leave the answer pending for ever


def open_live(state, index=None, dim=8, **kwargs) -> LiveKeywords:
    live = LiveKeywords(state, Metrics(), niceness=0, **kwargs)
    live.attach(index if index is not None else DictIndex(dim), FakeEncoder(dim), TEACHER)
    return live


async def write(live, n, ids=None, delete=(), attributes=None):
    ids = [f"kw:{n}"] if ids is None else ids
    future = live.submit(ids, [f"keyword text {i}" for i in ids], attributes or [{"n": n} for _ in ids], list(delete))
    return await asyncio.wait_for(future, HANG)


def recovered(state, dim=8):
    """What a restart finds: (live set, index) after start-up on a fresh fake index."""
    index = DictIndex(dim)
    live = open_live(state, index, dim)
    live.close()
    return live.live, index


# ---- finding 5: failures after the fsync ----

def test_an_index_failing_after_the_log_write_keeps_the_change_durable_numbered_and_applied_later(tmp_path):
    index = DictIndex()

    async def scenario():
        live = open_live(tmp_path, index)
        live.start(asyncio.get_running_loop())
        assert (await write(live, 1))["sequence"] == 1
        index.down = True
        for n in (2, 3):
            with pytest.raises(NotVisible, match=f"durable \\(sequence {n}\\)"):
                await write(live, n, delete=["kw:1"] if n == 2 else ())
        assert live.live.sequence == 3 and live.get("kw:3")["text"] == "keyword text kw:3" and live.get("kw:1") is None
        assert "kw:2" not in index.rows
        index.down = False
        assert (await write(live, 4))["sequence"] == 4  # the waiting changes first, in order
        assert index.applied[-3:] == [(["kw:1"], ["kw:2"]), ([], ["kw:3"]), ([], ["kw:4"])]
        assert set(index.rows) == {"kw:2", "kw:3", "kw:4"}
        live.close()

    asyncio.run(scenario())
    back, again = recovered(tmp_path)
    assert back.sequence == 4 and set(again.rows) == {"kw:2", "kw:3", "kw:4"}
    assert [c.sequence for c in Wal.open(tmp_path / "wal.log")[1]] == [1, 2, 3, 4]  # no number used twice


def test_the_waiting_changes_reach_the_index_while_no_write_comes(tmp_path, monkeypatch):
    monkeypatch.setattr(keywords_module, "RETRY_INDEX_S", 0.01)
    index = DictIndex()

    async def scenario():
        live = open_live(tmp_path, index)
        live.start(asyncio.get_running_loop())
        index.down = True
        with pytest.raises(NotVisible):
            await write(live, 1)
        index.down = False
        for _ in range(HANG * 100):  # bounded poll for the idle retry
            if "kw:1" in index.rows:
                break
            await asyncio.sleep(0.01)
        assert "kw:1" in index.rows
        live.close()

    asyncio.run(scenario())


@contextlib.contextmanager
def disk(tmp_path, fault):
    """The state folder on a 256 KiB tmpfs, or on the usual disk (for RLIMIT_FSIZE)."""
    with small_disk(tmp_path / "disk", 256 * 1024) as mounted:
        if fault == "tmpfs" and mounted is None:
            pytest.skip("mounting a tmpfs is not allowed here (the rlimit case covers the same path)")
        yield (mounted if fault == "tmpfs" else tmp_path) / "state"


@pytest.mark.parametrize("fault", ["tmpfs", "rlimit"])
def test_a_snapshot_failing_on_a_full_disk_answers_the_durable_change_and_waits_before_trying_again(
        tmp_path, monkeypatch, fault, caplog):
    """768-d vectors (3 KiB a keyword); a snapshot every 3 changes of one keyword each. The 6th
    change's record fits, its snapshot (6 keywords) does not."""
    tries = []
    real = keywords_module.write_snapshot
    monkeypatch.setattr(keywords_module, "write_snapshot",
                        lambda state, live: (tries.append(live.sequence), real(state, live))[1])

    async def scenario(state):
        live = open_live(state, DictIndex(768), 768, snapshot_every=3)
        live.start(asyncio.get_running_loop())
        for n in range(1, 6):
            await write(live, n)
        if fault == "tmpfs":
            filler = fill(state.parent, leave=2)  # a page or two for the record, not 6 for the snapshot
            limit = contextlib.nullcontext()
        else:
            limit = file_size_limit(16 * 1024)  # the log stays under it; the snapshot's vectors do not
        with caplog.at_level(logging.ERROR), limit:
            assert (await write(live, 6))["sequence"] == 6  # durable and visible: a 200
            if fault == "tmpfs":
                filler.unlink()
            assert (await write(live, 7))["sequence"] == 7
        assert "snapshot at sequence 6 failed" in caplog.text
        assert tries == [3, 6]  # change 7 did not try again
        assert not list(state.glob(".snapshot-tmp-*"))  # nothing half-written stays
        assert sorted(p.name for p in state.glob("snapshot-*")) == ["snapshot-000000000003"]
        for n in (8, 9):
            await write(live, n)
        assert tries == [3, 6, 9]  # three changes later it tried again, and this time it fit
        live.close()

    with disk(tmp_path, fault) as state:
        asyncio.run(scenario(state))
        back, index = recovered(state, 768)
        assert back.sequence == 9 and set(index.rows) == {f"kw:{n}" for n in range(1, 10)}
        assert sorted(p.name for p in state.glob("snapshot-*")) == ["snapshot-000000000009"]


def test_a_log_reset_failing_on_a_full_disk_leaves_the_log_open_and_every_change_kept(tmp_path, caplog):
    """The snapshot fits exactly; the emptied log that should replace wal.log does not (a page)."""
    with small_disk(tmp_path / "disk", 256 * 1024) as mounted:
        if mounted is None:
            pytest.skip("mounting a tmpfs is not allowed here (tests/service/live/test_wal.py covers Wal.reset)")
        state = mounted / "state"

        async def scenario():
            live = open_live(state, DictIndex(768), 768)
            live.start(asyncio.get_running_loop())
            for n in range(1, 4):
                await write(live, n)
            probe = tmp_path / "probe"  # the same snapshot elsewhere: how many pages it takes
            probe.mkdir()
            keywords_module.write_snapshot(probe, live.live)
            filler = fill(mounted, leave=pages(probe))
            with caplog.at_level(logging.ERROR):
                live._snapshot_or_log()
            assert "snapshot at sequence 3 failed" in caplog.text
            assert [p.name for p in state.glob("snapshot-*")] == ["snapshot-000000000003"]
            filler.unlink()
            assert (await write(live, 4))["sequence"] == 4  # the log was kept open: no closed-file 500
            live.close()

        asyncio.run(scenario())
        back, index = recovered(state, 768)
        assert back.sequence == 4 and set(index.rows) == {f"kw:{n}" for n in range(1, 5)}


# ---- finding 6: the writer thread never dies, the event loop never counts Milvus ----

def test_a_count_that_raises_does_not_stop_the_writer_and_submit_never_counts(tmp_path):
    index = DictIndex()

    async def scenario():
        live = open_live(tmp_path, index)
        live.start(asyncio.get_running_loop())
        index.len_fails = True
        index.len_threads.clear()
        for n in range(1, 4):  # the second would wait for ever behind a dead writer
            assert (await write(live, n))["sequence"] == n
        assert threading.get_ident() not in index.len_threads  # len() is a Milvus round trip
        live.close()

    asyncio.run(scenario())


# ---- finding 14: the queue is bounded while a reload holds writes; a late commit carries them ----

def test_writes_held_by_a_reload_fill_the_queue_and_the_next_is_refused(tmp_path):
    async def scenario():
        live = open_live(tmp_path, queue_size=3)
        live.start(asyncio.get_running_loop())
        new = DictIndex()
        handover = await live.handover(new, FakeEncoder(), TEACHER)
        held = [live.submit([f"kw:{n}"], [f"text {n}"], [{}], []) for n in range(3)]
        for _ in range(HANG * 100):  # bounded: the encoder thread has passed them on to the held writer
            if live._jobs.qsize() == 0:
                break
            await asyncio.sleep(0.01)
        with pytest.raises(LiveUnavailable, match="queue is full"):
            live.submit(["kw:9"], ["text 9"], [{}], [])
        handover.commit()
        answers = await asyncio.wait_for(asyncio.gather(*held), HANG)
        assert [a["sequence"] for a in answers] == [1, 2, 3] and set(new.rows) == {"kw:0", "kw:1", "kw:2"}
        assert (await write(live, 9))["sequence"] == 4  # room again
        live.close()

    asyncio.run(scenario())


def test_a_commit_after_the_hold_timed_out_carries_the_writes_made_since_to_the_new_index(tmp_path, monkeypatch):
    monkeypatch.setattr(Handover, "TIMEOUT_S", 0.0)  # the hold runs out at once
    old = DictIndex()

    async def scenario():
        live = open_live(tmp_path, old)
        live.start(asyncio.get_running_loop())
        await write(live, 1)
        new = DictIndex()
        handover = await live.handover(new, FakeEncoder(), TEACHER)
        await write(live, 2)  # after the time-out: the old index
        assert "kw:2" in old.rows and "kw:2" not in new.rows
        handover.commit()  # the reload swapped anyway
        await write(live, 3)
        assert set(new.rows) == {"kw:1", "kw:2", "kw:3"} and "kw:3" not in old.rows
        live.close()

    asyncio.run(scenario())


# ---- finding 3: what the index refuses is refused before the log, and dropped on replay ----

class MilvusRules(DictIndex):
    """A fake index with Milvus' rules on rows (retrieval.milvus.keyword_rows)."""

    def check_rows(self, ids, vectors, texts, attributes) -> None:
        keyword_rows(ids, vectors, texts, attributes, self.dim)

    def apply(self, delete_ids, ids, vectors, texts, attributes) -> int:
        if len(ids):  # as MilvusIndex.upsert, which only runs for upserts
            keyword_rows(ids, vectors, texts, attributes, self.dim)
        return super().apply(delete_ids, ids, vectors, texts, attributes)


def test_a_change_the_index_refuses_is_refused_before_it_is_logged(tmp_path):
    async def scenario():
        live = open_live(tmp_path, MilvusRules())
        live.start(asyncio.get_running_loop())
        size = live.wal.size
        with pytest.raises(ChangeRefused, match="64-bit"):
            await write(live, 1, attributes=[{"p": 1e19}])
        assert live.wal.size == size and live.live.sequence == 0
        assert (await write(live, 2))["sequence"] == 1
        live.close()

    asyncio.run(scenario())
    assert [c.sequence for c in Wal.open(tmp_path / "wal.log")[1]] == [1]


def test_more_attributes_than_milvus_holds_are_refused_before_the_log(tmp_path):
    """HLM_MAX_ATTRIBUTES admits up to 256 a keyword; a Milvus collection's array holds 64."""
    async def scenario():
        live = open_live(tmp_path, MilvusRules())
        live.start(asyncio.get_running_loop())
        with pytest.raises(ChangeRefused, match="at most 64 attributes"):
            await write(live, 1, attributes=[{f"a{i}": i for i in range(65)}])
        assert live.live.sequence == 0 and (await write(live, 2, attributes=[{f"a{i}": i for i in range(64)}]))
        live.close()

    asyncio.run(scenario())


def test_a_logged_change_the_index_refuses_is_dropped_at_start_up_not_a_refused_start(tmp_path, caplog):
    """What an older version left: the refused change logged (answered 500), then the next change
    under the same sequence number."""
    vector = np.ones((1, 8), np.float32) / np.sqrt(8)
    wal, _ = Wal.open(tmp_path / "wal.log")
    wal.append(Change(1, TEACHER, ["kw:bad"], ["bad"], [{"p": 1e19}], vector, []))
    wal.append(Change(1, TEACHER, ["kw:good"], ["good"], [{"p": 1}], vector, []))
    wal.append(Change(2, TEACHER, ["kw:two"], ["two"], [{}], vector, ["kw:zz"]))
    wal.close()
    index = MilvusRules()
    with caplog.at_level(logging.ERROR):
        live = open_live(tmp_path, index)
    assert "logged change 1 (1 upserts, 0 deletes) is dropped" in caplog.text
    assert set(index.rows) == {"kw:good", "kw:two"} and live.live.sequence == 2 and "kw:bad" not in live.live.upserts
    live.close()


# ---- what each outcome is answered over HTTP (service/live/admin.py) ----

@pytest.mark.parametrize("error, status, code", [
    (NotVisible("The change is durable (sequence 7) but the keyword index cannot apply it now (down)."), 503,
     "not_visible"),
    (ChangeRefused("The keyword index refuses the change (too many attributes); nothing was applied."), 422,
     "change_refused"),
    (LiveUnavailable("The change could not be written to the log (No space left on device); nothing was applied."),
     503, "not_applied"),
])
def test_each_outcome_of_a_change_has_its_own_answer(error, status, code):
    from types import SimpleNamespace

    from service.errors import ServiceError
    from service.live.admin import change_keywords

    async def scenario():
        failed = asyncio.get_running_loop().create_future()
        failed.set_exception(error)
        live = SimpleNamespace(submit=lambda *args: failed)
        settings = SimpleNamespace(max_keyword_items=10, retry_after_s=3, max_keyword_chars=100, max_attributes=16)
        service = SimpleNamespace(check_admin=lambda request: None, settings=settings, metrics=Metrics(),
                                  runtime=lambda: SimpleNamespace(live=live))

        class Request:
            async def body(self):
                return b'{"upsert": [{"id": "kw:1", "text": "drill"}]}'

        with pytest.raises(ServiceError) as caught:
            await change_keywords(service, Request())
        return caught.value

    answer = asyncio.run(scenario())
    assert (answer.status, answer.code) == (status, code) and answer.message == str(error)
    assert "\n" not in answer.message and (status != 503 or answer.headers == {"Retry-After": "3"})

"""A reload's work runs in its own thread at lower CPU priority, and hands back its result or error."""

from __future__ import annotations

import asyncio
import os
import sys
import threading

import pytest

from service.reload import RELOAD_NICENESS, in_low_priority_thread


def test_the_work_runs_off_the_loop_at_lower_priority_and_returns_its_result():
    def work(x):
        return x * 2, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    async def main():
        return await in_low_priority_thread(work, 21), threading.get_native_id()

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    (result, worker, niceness), loop_thread = asyncio.run(main())
    assert result == 42 and worker != loop_thread
    if sys.platform.startswith("linux"):  # niceness is per thread there
        assert niceness == min(19, before + RELOAD_NICENESS)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before  # the caller's is untouched


def test_an_error_in_the_work_reaches_the_caller():
    def work():
        raise ValueError("bad artifact")

    with pytest.raises(ValueError, match="bad artifact"):
        asyncio.run(in_low_priority_thread(work))

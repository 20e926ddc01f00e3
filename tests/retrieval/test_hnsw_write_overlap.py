"""A search that provably runs in the middle of a live write (retrieval/hnsw.py, one graph).

The writer is paused by a hook between two of its adds (the graph is free then: each add takes
it alone), so the search below runs while the change is half in the graph: by construction,
not by a sleep and luck. It must answer, and must not see the change's keywords, which stay
hidden until the change's commit step; after the commit it sees all of them.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import numpy as np
import pytest

from artifact.manifest import verify
from retrieval.base import SearchParams
from retrieval.hnsw import HnswIndex

pytestmark = pytest.mark.timeout(120)


def open_index(root) -> HnswIndex:
    m = verify(root, checksums=False)["index"]
    return HnswIndex(root / m["path"], root / m["store"], m["dim"], m["ef"])


def test_a_search_in_the_middle_of_a_write_sees_none_of_it_and_then_all_of_it(static_artifact):
    index = open_index(static_artifact)
    # Next to existing keywords (a random vector in 768-d is far from everything, and a graph
    # walk need not reach it): each new keyword is the nearest neighbour of its own vector.
    rng = np.random.default_rng(7)
    vectors = np.asarray(index.graph.get_items(list(range(0, 800, 100))), dtype=np.float32)
    vectors += rng.normal(scale=0.02, size=vectors.shape).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"kw:new:{i}" for i in range(8)]
    count = index.graph.get_current_count()

    half_done, resume = threading.Event(), threading.Event()
    exclusive = index._exclusive

    @contextmanager
    def hooked():
        with exclusive():
            yield
        # Outside the lock: once the first element of the change is in the graph, the writer
        # waits here, its change half written, until the search below has answered.
        if index.graph.get_current_count() == count + 1 and not half_done.is_set():
            half_done.set()
            assert resume.wait(60), "the search never answered"

    index._exclusive = hooked
    errors: list[BaseException] = []

    def write() -> None:
        try:
            index.upsert(ids, vectors, [f"new keyword {i}" for i in range(8)], [{"source": "kw"}] * 8)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert half_done.wait(60), "the write never started"
        # The write is in progress now: one of its 8 vectors is in the graph, the rest not.
        assert index.graph.get_current_count() == count + 1 and writer.is_alive()
        during = index.search(vectors, SearchParams(10))
        assert writer.is_alive() and not resume.is_set()  # answered while the write waited
    finally:
        resume.set()
        writer.join(60)
    assert not errors, errors[0]
    assert all(len(row) == 10 for row in during)
    assert not {hit.id for row in during for hit in row} & set(ids)  # nothing of the half-written change
    after = index.search(vectors, SearchParams(1))
    assert [row[0].id for row in after] == ids  # the whole change, once committed
    assert all(abs(row[0].score - 1.0) < 1e-4 for row in after)

"""The write-ahead log and snapshots on their own (no server): torn tails, checksums, recovery order."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from service.live.liveset import LiveSet
from service.live.snapshot import latest_snapshot, read_snapshot, write_snapshot
from service.live.wal import MAGIC, Change, Wal, WalCorrupt

DIM = 8


def change(seq: int, ids=(), delete=()) -> Change:
    rng = np.random.default_rng(seq)
    vectors = rng.standard_normal((len(ids), DIM)).astype(np.float32) if ids else None
    return Change(seq, "teacher-sha", list(ids), [f"text of {i}" for i in ids], [{"n": seq, "ok": True} for _ in ids],
                  vectors, list(delete))


def test_records_come_back_whole_after_reopening(tmp_path):
    wal, records = Wal.open(tmp_path / "wal.log")
    assert records == [] and (tmp_path / "wal.log").read_bytes() == MAGIC
    written = [change(1, ["a", "b"]), change(2, delete=["a"]), change(3, ["c"], ["b"])]
    for c in written:
        wal.append(c)
    wal.close()
    _, records = Wal.open(tmp_path / "wal.log")
    assert [(r.sequence, r.upsert_ids, r.delete_ids, r.texts, r.attributes) for r in records] == \
           [(c.sequence, c.upsert_ids, c.delete_ids, c.texts, c.attributes) for c in written]
    np.testing.assert_array_equal(records[0].vectors, written[0].vectors)
    assert records[1].vectors is None


@pytest.mark.parametrize("cut", [1, 7, 30, -1])  # inside the length/crc head, inside the json, inside the vectors
def test_a_torn_last_record_is_dropped_with_a_log_line_and_the_file_cut_back(tmp_path, caplog, cut):
    path = tmp_path / "wal.log"
    wal, _ = Wal.open(path)
    wal.append(change(1, ["a"]))
    whole = wal.size
    wal.append(change(2, ["b", "c"]))
    full = wal.size
    wal.close()
    with open(path, "r+b") as handle:
        handle.truncate(whole + cut if cut > 0 else full + cut)
    with caplog.at_level(logging.WARNING):
        wal, records = Wal.open(path)
    assert [r.sequence for r in records] == [1]
    assert "dropped" in caplog.text and "never acknowledged" in caplog.text
    assert path.stat().st_size == whole
    wal.append(change(3, ["d"]))  # appends after the last whole record, not after the garbage
    wal.close()
    assert [r.sequence for r in Wal.open(path)[1]] == [1, 3]


def test_a_last_record_with_a_wrong_checksum_is_torn_but_one_before_whole_records_is_damage(tmp_path):
    path = tmp_path / "wal.log"
    wal, _ = Wal.open(path)
    wal.append(change(1, ["a"]))
    first_end = wal.size
    wal.append(change(2, ["b"]))
    wal.close()
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # last record: full length, wrong content (the disk never got the data)
    path.write_bytes(bytes(data))
    assert [r.sequence for r in Wal.open(path)[1]] == [1]

    wal, _ = Wal.open(path)
    wal.append(change(2, ["b"]))
    wal.close()
    data = bytearray(path.read_bytes())
    data[first_end - 2] ^= 0xFF  # inside record 1, with record 2 whole after it
    path.write_bytes(bytes(data))
    with pytest.raises(WalCorrupt, match="acknowledged changes are damaged"):
        Wal.open(path)


def test_a_log_whose_header_never_reached_the_disk_opens_empty(tmp_path):
    path = tmp_path / "wal.log"
    path.write_bytes(MAGIC[:3])
    wal, records = Wal.open(path)
    assert records == [] and path.read_bytes() == MAGIC
    wal.append(change(1, ["a"]))
    assert [r.sequence for r in Wal.open(path)[1]] == [1]


def test_a_failed_append_leaves_no_partial_record(tmp_path):
    path = tmp_path / "wal.log"
    wal, _ = Wal.open(path)
    wal.append(change(1, ["a"]))
    size = wal.size
    wal._file.close()  # the next write fails (as on a full disk)
    with pytest.raises(ValueError):
        wal.append(change(2, ["b"]))
    assert path.stat().st_size == size


def test_snapshot_round_trip_and_the_liveset_rules(tmp_path):
    live = LiveSet(teacher="teacher-sha")
    live.apply(change(1, ["a", "b", "c"]))
    live.apply(change(2, ["b"], ["a"]))  # b replaced, a deleted
    live.apply(change(3, ["a"]))  # a back
    live.apply(change(4, delete=["c", "zz"]))
    assert set(live.upserts) == {"a", "b"} and live.deletes == {"c", "zz"} and live.sequence == 4
    write_snapshot(tmp_path, live)
    write_snapshot(tmp_path, live)  # the same sequence again replaces it
    path = latest_snapshot(tmp_path)
    assert path.name == "snapshot-000000000004" and len(list(tmp_path.glob("snapshot-*"))) == 1
    back = read_snapshot(path)
    assert back.sequence == 4 and back.teacher == "teacher-sha" and back.deletes == {"c", "zz"}
    assert {k: (e.text, e.attributes) for k, e in back.upserts.items()} == \
           {k: (e.text, e.attributes) for k, e in live.upserts.items()}
    np.testing.assert_array_equal(back.upserts["b"].vector, live.upserts["b"].vector)
    assert not list(tmp_path.glob(".snapshot-tmp-*"))

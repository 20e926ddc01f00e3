"""Crash consistency of the live keyword state under power loss, proven by replay (#28).

kill -9 only kills the process: the page cache survives it, so a missing fsync passes every
kill test. Here every write, fsync, rename, truncate and removal of the live-keyword path is
recorded (tests/reliability/crashfs.py, through the seam service/live/fsio.py) while a
workload of 50 changes runs: upserts and deletes, a failed append (ENOSPC after half the
record reached the file) and its retry, snapshots at 20 and 30, the one at 30 taken twice
(the replacement at its own sequence), a last one at 50. Then, for every prefix of the
operations, each state a power cut could leave (unsynced data dropped, pending operations
persisted in order or names before data, the last write torn) is written to a folder and
started on, as the service starts: that must succeed, hold every acknowledged change and
nothing else (the state after exactly m changes, m the acknowledged count or one more for
the change in flight), and take one more change that survives the next start. A crash in
the middle of that start-up (it cuts torn tails, empties a log) is replayed the same way.

The method (record, then enumerate crash states against a conservative persistence model)
is ALICE's (Pillai et al., OSDI 2014) and CrashMonkey's (Mohan et al., OSDI 2018); the
mutants at the end show the check fails when an fsync is left out.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

import service.live.fsio as fsio
from service.live.keywords import LiveKeywords, LiveUnavailable
from service.live.liveset import LiveSet
from service.live.wal import Change
from service.metrics import Metrics

from .crashfs import RecordingFiles, crash_states

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "service" / "live"))
from live_fakes import DictIndex, FakeEncoder  # noqa: E402

TEACHER = "teacher-sha"
CHANGES = 50
FAILED_APPEND = 13  # this change's first append fails half-way (disk full); its retry stands
ENCODER = FakeEncoder(8)


def workload(seed: int = 5) -> list[tuple[list[str], list[str], list[dict], list[str]]]:
    """50 changes over 24 ids: upserts of 1-3 keywords (new texts for old ids too), deletes."""
    rng = random.Random(seed)
    present: set[str] = set()
    out = []
    for n in range(1, CHANGES + 1):
        ups = sorted(rng.sample([f"kw:{i}" for i in range(24)], rng.randint(0 if n % 5 == 0 else 1, 3)))
        gone = sorted(rng.sample(sorted(present - set(ups)), min(len(present - set(ups)), rng.randint(0, 2))))
        if not ups and not gone:
            gone = ["kw:never"]
        out.append((ups, [f"text {k} at {n}" for k in ups], [{"n": n, "odd": n % 2 == 1} for _ in ups], gone))
        present = (present | set(ups)) - set(gone)
    return out


def expected_states(changes) -> list[LiveSet]:
    """The live set after exactly m changes, m = 0..50."""
    out, live = [LiveSet(teacher=TEACHER)], LiveSet(teacher=TEACHER)
    for n, (ups, texts, attrs, gone) in enumerate(changes, start=1):
        vectors = ENCODER.encode(texts).vectors if texts else None
        live.apply(Change(n, TEACHER, ups, texts, attrs, vectors, gone))
        out.append(LiveSet(TEACHER, live.sequence, {k: v for k, v in live.upserts.items()}, set(live.deletes)))
    return out


def fingerprint(live: LiveSet) -> tuple:
    return (live.sequence, tuple(sorted((k, e.text, repr(sorted(e.attributes.items())), e.vector.tobytes())
                                        for k, e in live.upserts.items())), tuple(sorted(live.deletes)))


def run_workload(root: Path, recorder: RecordingFiles, monkeypatch) -> None:
    monkeypatch.setattr(fsio, "FILES", recorder)
    live = LiveKeywords(root / "state", Metrics(), snapshot_every=20, niceness=0)
    live.attach(DictIndex(8), ENCODER, TEACHER)
    for n, (ups, texts, attrs, gone) in enumerate(workload(), start=1):
        vectors = ENCODER.encode(texts).vectors if texts else None
        try:
            live._do_change(ups, texts, attrs, gone, vectors, TEACHER)  # what the writer thread runs
        except LiveUnavailable:
            assert n == FAILED_APPEND
            recorder.mark(("refused", n))
            live._do_change(ups, texts, attrs, gone, vectors, TEACHER)  # the client's retry
        recorder.mark(("ack", n))
        if n == 30:  # a snapshot at 30 again: the same sequence, put in beside the first one
            live._snapshot()
    live.close()
    monkeypatch.setattr(fsio, "FILES", fsio.Files())


def start(state_dir: Path) -> tuple[LiveKeywords, DictIndex]:
    """What the service does at start-up: open the folder, replay onto a fresh index."""
    index = DictIndex(8)
    live = LiveKeywords(state_dir, Metrics(), snapshot_every=20, niceness=0)
    live.attach(index, ENCODER, TEACHER)
    return live, index


class Checker:
    """Starts on each crash state once (states repeat across cuts) and says what it found."""

    def __init__(self, work: Path, monkeypatch):
        self.work, self.monkeypatch = work, monkeypatch
        self.expected = expected_states(workload())
        self.by_print = {fingerprint(s): m for m, s in enumerate(self.expected)}
        self.seen: dict[str, object] = {}
        self.nested = 0  # start-ups on a state a cut during start-up left
        self.folders = 0

    def recover(self, state, nested: bool = True):
        """m if start-up found the state after exactly m changes (and took one more change that
        the next start-up kept), else a sentence."""
        key = state.digest()
        if key not in self.seen:
            self.seen[key] = self._recover(state, nested)
        return self.seen[key]

    def _recover(self, state, nested: bool):
        self.folders += 1
        where = self.work / f"s{self.folders}"
        state.write(where)
        recorder = RecordingFiles(where, existing=state.files) if nested else None
        if recorder is not None:
            self.monkeypatch.setattr(fsio, "FILES", recorder)
        try:
            live, index = start(where / "state")
        except Exception as exc:  # noqa: BLE001 - a refused start-up is the violation reported
            return f"start-up failed: {exc.__class__.__name__}: {exc}"
        finally:
            self.monkeypatch.setattr(fsio, "FILES", fsio.Files())
        try:
            m = self.by_print.get(fingerprint(live.live))
            if m is None:
                return "the live set after start-up is no state the workload passed through"
            rows = {k: (t, a) for k, (t, a, _) in index.rows.items()}
            if rows != {k: (e.text, e.attributes) for k, e in self.expected[m].upserts.items()}:
                return "the index after start-up does not hold the live set"
            live._do_change(["after:1"], ["one more"], [{}], [], ENCODER.encode(["one more"]).vectors, TEACHER)
        finally:
            live.close()
        try:
            again, _ = start(where / "state")
        except Exception as exc:  # noqa: BLE001 - reported
            return f"the start-up after one more change failed: {exc.__class__.__name__}: {exc}"
        kept = again.live.sequence == m + 1 and "after:1" in again.live.upserts
        again.close()
        if not kept:
            return "a change made after start-up was lost by the next start-up"
        if recorder is not None and recorder.ops:  # start-up repaired the folder: cut it there too
            for cs in crash_states(recorder.ops, recorder.initial):
                if cs.digest() == state.digest():  # the cut before start-up changed anything
                    continue
                self.nested += 1
                found = self.recover(cs, nested=False)
                if found != m:
                    return f"a cut during start-up ({cs.how}, after {cs.after} of its operations) gave {found!r}"
        return m


def check(ops, checker: Checker) -> tuple[list[str], int, int]:
    """Every crash state of ``ops`` checked: (violations, cut points, crash states)."""
    problems, cuts, states = [], set(), 0
    for cs in crash_states(ops):
        cuts.add(cs.after)
        states += 1
        acked = sum(1 for mark in cs.marks if mark[0] == "ack")
        found = checker.recover(cs)
        if not isinstance(found, int):
            problems.append(f"cut after op {cs.after} ({cs.how}): {found}")
        elif not acked <= found <= min(acked + 1, CHANGES):
            problems.append(f"cut after op {cs.after} ({cs.how}): {acked} changes acknowledged, start-up found {found}")
    return problems, len(cuts), states


def _called_from(op, name: str) -> bool:
    return name in op.callers


def record(tmp_path, monkeypatch, skip=None) -> RecordingFiles:
    """The workload under a recorder; change 13's first append fails half-way (ENOSPC)."""
    root = tmp_path / "disk"
    root.mkdir()
    appends = []

    def fail_write(op) -> bool:
        if not _called_from(op, "Wal.append"):
            return False
        appends.append(op)
        return len(appends) == FAILED_APPEND
    recorder = RecordingFiles(root, skip=skip, fail_write=fail_write)
    run_workload(root, recorder, monkeypatch)
    return recorder


def test_every_state_a_power_cut_leaves_starts_with_every_acknowledged_change(tmp_path, monkeypatch):
    recorder = record(tmp_path, monkeypatch)
    marks = [op.args[0] for op in recorder.ops if op.kind == "mark"]
    assert [m for m in marks if m[0] == "ack"] == [("ack", n) for n in range(1, CHANGES + 1)]
    assert ("refused", FAILED_APPEND) in marks
    ops = [op for op in recorder.ops if op.kind != "mark"]
    assert {"create", "mkdir", "write", "trunc", "fsync", "rename", "unlink", "rmdir"} <= {op.kind for op in ops}
    checker = Checker(tmp_path / "states", monkeypatch)
    problems, cuts, states = check(recorder.ops, checker)
    print(f"power loss: {len(ops)} operations over {CHANGES} changes; {cuts} cut points, {states} crash states; "
          f"{checker.nested} more from cuts during the start-ups that repaired a folder; {len(checker.seen)} distinct "
          f"states started on; {len(problems)} violations")
    assert not problems, "\n".join(problems[:20])
    assert cuts == len(recorder.ops) + 1 and states >= 2 * cuts


# ---- the check can fail: leave one fsync out and it finds a lost or damaged change ----
#
# Not among them: the fsyncs of the state folder inside write_snapshot. Wal.reset fsyncs the
# same folder next, and a folder's entries persist in order, so under this model each crash
# between the two leaves the older snapshot and the whole log, or both new: they are kept so
# that a snapshot is durable on its own (a reset that fails after it must not matter).

MUTANTS = {
    "a log record's fsync": lambda op: op.kind == "fsync" and _called_from(op, "Wal.append"),
    "the folder's fsync after the emptied log's rename": (
        lambda op: op.kind == "fsync" and _called_from(op, "Wal.reset") and _called_from(op, "fsync_dir")),
    "the fsync of a new snapshot's folder (its files' names)": (
        lambda op: op.kind == "fsync" and _called_from(op, "_write_files") and _called_from(op, "fsync_dir")),
    "a snapshot file's fsync": (
        lambda op: op.kind == "fsync" and _called_from(op, "NewFile.commit") and _called_from(op, "_write_files")),
    "the fsync of the new log's folder": (
        lambda op: op.kind == "fsync" and _called_from(op, "_write_empty") and _called_from(op, "fsync_dir")),
    "the fsync of the state folder's parent when it is made": (
        lambda op: op.kind == "fsync" and _called_from(op, "make_dirs")),
}


@pytest.mark.parametrize("mutant", list(MUTANTS))
def test_the_check_fails_when_an_fsync_is_left_out(tmp_path, monkeypatch, mutant):
    recorder = record(tmp_path, monkeypatch, skip=MUTANTS[mutant])
    problems, cuts, states = check(recorder.ops, Checker(tmp_path / "states", monkeypatch))
    print(f"without {mutant}: {len(problems)} of {states} crash states violate, e.g. {problems[:1]}")
    assert problems

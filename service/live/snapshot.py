"""Snapshots of the live set: ``snapshot-<sequence>/`` with ``keywords.jsonl`` + ``vectors.npy``.

Written into a temporary folder, fsynced, renamed into place (a folder rename is atomic), the
folder fsynced; older snapshots are removed after, and the log is emptied only after that.
A crash at any point leaves the previous snapshot + the whole log, or the new snapshot (+ a
log whose records it already holds, skipped by sequence on replay). The header line records
the sequence, the teacher's sha256 and the vectors' sha256, checked on load.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from artifact.manifest import sha256_file
from service.live.liveset import Entry, LiveSet
from service.live.wal import _fsync_dir

FORMAT = 1
PREFIX = "snapshot-"


class SnapshotError(Exception):
    """A snapshot in place that cannot be read; one sentence."""


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def write_snapshot(state_dir: Path, live: LiveSet) -> Path:
    ids = list(live.upserts)
    tmp = Path(tempfile.mkdtemp(prefix=".snapshot-tmp-", dir=state_dir))
    try:
        vectors = (np.stack([live.upserts[k].vector for k in ids]).astype(np.float32) if ids
                   else np.zeros((0, 0), dtype=np.float32))
        np.save(tmp / "vectors.npy", vectors, allow_pickle=False)
        with open(tmp / "keywords.jsonl", "w", encoding="utf-8") as handle:
            head = {"format": FORMAT, "sequence": live.sequence, "teacher": live.teacher, "upserts": len(ids),
                    "deletes": len(live.deletes), "vectors_sha256": sha256_file(tmp / "vectors.npy")}
            handle.write(json.dumps(head) + "\n")
            for kid in ids:
                e = live.upserts[kid]
                handle.write(json.dumps({"id": kid, "text": e.text, "attributes": e.attributes}, ensure_ascii=False) + "\n")
            for kid in sorted(live.deletes):
                handle.write(json.dumps({"id": kid, "deleted": True}, ensure_ascii=False) + "\n")
        _fsync(tmp / "vectors.npy")
        _fsync(tmp / "keywords.jsonl")
        final = state_dir / f"{PREFIX}{live.sequence:012d}"
        if final.exists():  # the same sequence again (a snapshot with no change since): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(state_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in state_dir.glob(f"{PREFIX}*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_snapshot(state_dir: Path) -> Optional[Path]:
    found = sorted(p for p in state_dir.glob(f"{PREFIX}*") if p.is_dir() and p.name[len(PREFIX):].isdigit())
    return found[-1] if found else None


def read_snapshot(path: Path) -> LiveSet:
    try:
        with open(path / "keywords.jsonl", encoding="utf-8") as handle:
            head = json.loads(handle.readline())
            rows = [json.loads(line) for line in handle]
        if head.get("format") != FORMAT:
            raise SnapshotError(f"snapshot {path.name} has format {head.get('format')}, expected {FORMAT}")
        if sha256_file(path / "vectors.npy") != head["vectors_sha256"]:
            raise SnapshotError(f"snapshot {path.name}: vectors.npy does not match its sha256")
        vectors = np.load(path / "vectors.npy", allow_pickle=False)
    except (OSError, ValueError, KeyError) as exc:
        raise SnapshotError(f"snapshot {path.name} cannot be read ({exc.__class__.__name__}: {exc})") from None
    live = LiveSet(teacher=head["teacher"], sequence=int(head["sequence"]))
    upserts = [r for r in rows if not r.get("deleted")]
    if len(upserts) != head["upserts"] or len(upserts) != len(vectors):
        raise SnapshotError(f"snapshot {path.name} holds {len(upserts)} keywords and {len(vectors)} vectors, "
                            f"its header says {head['upserts']}")
    for row, vector in zip(upserts, vectors):
        live.upserts[row["id"]] = Entry(row["text"], row["attributes"], vector)
    live.deletes = {r["id"] for r in rows if r.get("deleted")}
    return live

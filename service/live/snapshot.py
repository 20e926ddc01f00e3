"""Snapshots of the live set: ``snapshot-<sequence>/`` with ``keywords.jsonl`` + ``vectors.npy``.

Written into a temporary folder, each file and then the folder fsynced (their names are the
folder's data), renamed into place (a folder rename is atomic), the state folder fsynced;
older snapshots are removed after, and the log is emptied only after that. A crash at any
point leaves the previous snapshot + the whole log, or the new snapshot (+ a log whose records
it already holds, skipped by sequence on replay). The header line records the sequence, the
teacher's sha256 and the vectors' sha256, checked on load.

A snapshot at a sequence that already has one (no change since, but the vectors re-encoded
by a new teacher) is never written over: it goes in beside it as ``snapshot-<sequence>.<n>``,
which ``latest_snapshot`` prefers, then the older one goes and the new one takes the plain
name. Removing the old one first would leave, after a crash between, no snapshot at all and
an emptied log (#28 finding 8). All writes go through ``service.live.fsio``.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Optional

import numpy as np

from artifact.manifest import sha256_file
from service.live import fsio
from service.live.fsio import NewFile, fsync_dir, remove_tree, temp_dir
from service.live.liveset import Entry, LiveSet

FORMAT = 1
PREFIX = "snapshot-"
TMP_PREFIX = ".snapshot-tmp-"
_NAME = re.compile(r"snapshot-(\d+)(?:\.(\d+))?")
_CHUNK = 1 << 20  # keywords.jsonl is written in pieces of about this many bytes


class SnapshotError(Exception):
    """A snapshot in place that cannot be read; one sentence."""


class _Hashing:
    """Writes through to a ``NewFile`` and hashes what passes (no second read of the vectors)."""

    def __init__(self, out: NewFile):
        self.out, self.digest = out, hashlib.sha256()

    def write(self, data) -> int:
        data = bytes(data)
        self.digest.update(data)
        return self.out.write(data)


def _key(path: Path) -> Optional[tuple[int, int]]:
    """(sequence, generation) of a snapshot folder's name; None for any other name."""
    m = _NAME.fullmatch(path.name)
    return (int(m.group(1)), int(m.group(2) or 0)) if m else None


def _write_files(tmp: Path, live: LiveSet) -> None:
    ids = list(live.upserts)
    vectors = (np.stack([live.upserts[k].vector for k in ids]).astype(np.float32) if ids
               else np.zeros((0, 0), dtype=np.float32))
    out = NewFile(tmp / "vectors.npy")
    try:
        hashing = _Hashing(out)
        np.save(hashing, vectors, allow_pickle=False)
        out.commit()
    finally:
        out.close()
    head = {"format": FORMAT, "sequence": live.sequence, "teacher": live.teacher, "upserts": len(ids),
            "deletes": len(live.deletes), "vectors_sha256": hashing.digest.hexdigest()}
    lines = [json.dumps(head) + "\n"]
    lines += [json.dumps({"id": k, "text": live.upserts[k].text, "attributes": live.upserts[k].attributes},
                         ensure_ascii=False) + "\n" for k in ids]
    lines += [json.dumps({"id": k, "deleted": True}, ensure_ascii=False) + "\n" for k in sorted(live.deletes)]
    out = NewFile(tmp / "keywords.jsonl")
    try:
        piece: list[bytes] = []
        size = 0
        for line in lines:
            piece.append(line.encode("utf-8"))
            size += len(piece[-1])
            if size >= _CHUNK:
                out.write(b"".join(piece))
                piece, size = [], 0
        out.write(b"".join(piece))
        out.commit()
    finally:
        out.close()
    fsync_dir(tmp)  # the two names in the new folder: without this a crash can leave it empty


def write_snapshot(state_dir: Path, live: LiveSet) -> Path:
    state_dir = Path(state_dir)
    tmp = temp_dir(state_dir, TMP_PREFIX)
    final = state_dir / f"{PREFIX}{live.sequence:012d}"
    try:
        _write_files(tmp, live)
        if not final.exists():
            fsio.FILES.replace(tmp, final)
            fsync_dir(state_dir)
        else:  # the same sequence again: beside the old one first, never in a gap between them
            gens = [k[1] for p in state_dir.glob(f"{final.name}*") if (k := _key(p)) and k[0] == live.sequence]
            beside = state_dir / f"{final.name}.{max(gens) + 1}"
            fsio.FILES.replace(tmp, beside)
            fsync_dir(state_dir)
            remove_tree(final)
            fsync_dir(state_dir)
            fsio.FILES.replace(beside, final)
            fsync_dir(state_dir)
    except BaseException:
        if tmp.exists():
            try:
                remove_tree(tmp)
            except OSError:
                pass
        raise
    for old in state_dir.iterdir():  # older snapshots: harmless if a crash brings one back
        if old != final and _key(old) is not None:
            try:
                remove_tree(old)
            except OSError:
                pass
    return final


def latest_snapshot(state_dir: Path) -> Optional[Path]:
    """The newest snapshot folder: highest sequence, then highest generation."""
    found = [(k, p) for p in Path(state_dir).glob(f"{PREFIX}*") if (k := _key(p)) is not None and p.is_dir()]
    return max(found)[1] if found else None


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

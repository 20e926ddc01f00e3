"""The write-ahead log: length-prefixed, crc32-checksummed records, fsync before the answer.

File layout: an 8-byte magic, then records ``<u32 length><u32 crc32(payload)><payload>``,
little-endian. A payload is ``<u32 json length><json><float32 vectors>``: the change
(sequence, teacher, ids, texts, attributes, deletes) and the teacher's vectors of its upserts,
so a replay needs no encoder (unless the artifact's teacher changed meanwhile).

A crash mid-append leaves a torn last record: shorter than its length, or complete in
length with a wrong checksum or zeros (the file grew but the data never reached the disk).
It was never acknowledged (the answer waits for the fsync), so it is dropped with a log line
and the file cut back to the last whole record. A bad record *followed by* whole records is
not a torn write but damage to acknowledged data: that stops start-up with one sentence and
leaves the file as it is.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from service.live import fsio
from service.live.fsio import NewFile, fsync_dir, write_all

log = logging.getLogger(__name__)

MAGIC = b"HLMWAL1\n"
_HEAD = struct.Struct("<II")
_JSON_LEN = struct.Struct("<I")
MAX_RECORD = 1 << 30  # a longer length field can only be garbage


class WalCorrupt(Exception):
    """The log is damaged before its last record (not a torn write); one sentence."""


@dataclass
class Change:
    """One admin request: applied whole, logged as one record."""

    sequence: int
    teacher: str  # sha256 of the teacher ONNX whose space ``vectors`` are in
    upsert_ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    attributes: list[dict] = field(default_factory=list)
    vectors: Optional[np.ndarray] = None  # float32 [len(upsert_ids), dim]
    delete_ids: list[str] = field(default_factory=list)

    def encode(self) -> bytes:
        vectors = np.zeros((0, 0), dtype="<f4") if self.vectors is None else np.ascontiguousarray(self.vectors, dtype="<f4")
        head = json.dumps({
            "sequence": self.sequence, "teacher": self.teacher, "dim": int(vectors.shape[1]) if vectors.size else 0,
            "upsert": [{"id": i, "text": t, "attributes": a} for i, t, a in zip(self.upsert_ids, self.texts, self.attributes)],
            "delete": self.delete_ids,
        }, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        return _JSON_LEN.pack(len(head)) + head + vectors.tobytes()

    @classmethod
    def decode(cls, payload: bytes) -> "Change":
        (n,) = _JSON_LEN.unpack_from(payload)
        head = json.loads(payload[4:4 + n].decode("utf-8"))
        rows = head["upsert"]
        dim = int(head["dim"])
        vectors = np.frombuffer(payload[4 + n:], dtype="<f4").astype(np.float32)
        vectors = vectors.reshape(len(rows), dim) if rows else None
        return cls(sequence=int(head["sequence"]), teacher=head["teacher"],
                   upsert_ids=[r["id"] for r in rows], texts=[r["text"] for r in rows],
                   attributes=[r["attributes"] for r in rows], vectors=vectors, delete_ids=list(head["delete"]))


def frame(payload: bytes) -> bytes:
    return _HEAD.pack(len(payload), zlib.crc32(payload)) + payload


# Every payload starts with its JSON length (4 bytes) and ``{"sequence":`` (json.dumps keeps the
# key order): a whole record can be looked for by this mark instead of at every byte. A string
# value cannot hold it (its quotes are escaped), and a chance match must also pass the crc.
_MARK = b'{"sequence":'
_MIN_PAYLOAD = _JSON_LEN.size + len(_MARK)


def _problem(data: bytes, offset: int) -> Optional[str]:
    """Why no whole record starts at ``offset`` (None: one does)."""
    end = len(data)
    if end - offset < _HEAD.size:
        return f"a record header of {end - offset} bytes"
    length, crc = _HEAD.unpack_from(data, offset)
    if not _MIN_PAYLOAD <= length <= MAX_RECORD:
        return f"a record length of {length}"
    if offset + _HEAD.size + length > end:
        return f"a record of {length} bytes with {end - offset - _HEAD.size} present"
    if zlib.crc32(memoryview(data)[offset + _HEAD.size:offset + _HEAD.size + length]) != crc:
        return "a record whose checksum does not match"
    return None


def _whole_record_after(data: bytes, start: int) -> Optional[int]:
    """The offset of the first whole record that begins at ``start`` or later, if any."""
    at = data.find(_MARK, start + _HEAD.size + _JSON_LEN.size)
    while at != -1:
        candidate = at - _HEAD.size - _JSON_LEN.size
        if _problem(data, candidate) is None:
            return candidate
        at = data.find(_MARK, at + 1)
    return None


def read_records(data: bytes) -> tuple[list[bytes], int, Optional[str]]:
    """(whole payloads, end offset of the last whole one, why the rest was dropped or None).

    Only the last append can be torn (each is fsynced before the next begins), so whatever
    follows the last whole record is a torn tail *unless* a whole record can be found after
    it: then the bad bytes sit between acknowledged records, whatever field they hit (a
    length pointing past the end included), and the log is damaged (#28 finding 9).
    """
    if not data.startswith(MAGIC):
        if MAGIC.startswith(data):  # created, crashed before the magic reached the disk
            return [], 0, "the log's header is incomplete" if data else None
        raise WalCorrupt("the write-ahead log does not start with its header (not a log, or damaged)")
    payloads, offset, end = [], len(MAGIC), len(data)
    while offset < end:
        problem = _problem(data, offset)
        if problem is not None:
            later = _whole_record_after(data, offset + 1)
            if later is not None:
                raise WalCorrupt(f"the write-ahead log has {problem} at byte {offset} and whole records follow it "
                                 f"(from byte {later}): acknowledged changes are damaged")
            return payloads, offset, f"a torn record at byte {offset} ({problem})"
        (length,) = struct.unpack_from("<I", data, offset)
        payloads.append(data[offset + _HEAD.size:offset + _HEAD.size + length])
        offset += _HEAD.size + length
    return payloads, offset, None


def _decode_all(path: Path, payloads: list[bytes]) -> list[Change]:
    changes = []
    for i, payload in enumerate(payloads):
        try:
            changes.append(Change.decode(payload))
        except (ValueError, KeyError, TypeError, struct.error) as exc:  # a whole record we cannot read: a bug
            raise WalCorrupt(f"the write-ahead log {path.name} holds record {i + 1}, checksum intact, that cannot be "
                             f"read ({exc.__class__.__name__}): acknowledged changes are damaged") from None
    return changes


class Wal:
    """The open log: ``append`` returns once the record is on disk.

    Writes go to an unbuffered descriptor at ``size`` (the end of the last whole record), so a
    failed write leaves nothing behind in memory; its bytes in the file are cut off at once, or
    before the next append if the cut itself failed (``_dirty``).
    """

    def __init__(self, path: Path, fd: Optional[int] = None):
        self.path = Path(path)
        self._fd = fsio.FILES.open(self.path, os.O_WRONLY) if fd is None else fd
        self.size = os.fstat(self._fd).st_size
        self._dirty = False  # bytes of a failed append may lie past ``size``
        self._dir_unsynced = False  # the rename of an emptied log is not durable yet

    @classmethod
    def open(cls, path: Path) -> tuple["Wal", list[Change]]:
        """Open (or create) the log; return it and its whole records, a torn tail cut off."""
        path = Path(path)
        stale = path.with_name(path.name + ".tmp")
        if stale.exists():  # an emptied log a crash left before its rename: never in use
            fsio.FILES.unlink(stale)
        if not path.exists():
            _write_empty(path)
        data = path.read_bytes()
        payloads, good, dropped = read_records(data)
        changes = _decode_all(path, payloads)
        if not dropped and len(data) >= len(MAGIC):
            return cls(path), changes
        if not dropped:  # an empty file: appended to as it is, the log would have no header
            _write_empty(path)
            return cls(path), changes
        log.warning("write-ahead log %s: dropped %s (%d bytes; a crash mid-write, never acknowledged); "
                    "%d whole records kept", path, dropped, len(data) - good, len(payloads))
        if good == 0:
            _write_empty(path)
            return cls(path), changes
        fd = fsio.FILES.open(path, os.O_WRONLY)
        try:
            fsio.FILES.ftruncate(fd, good)
            fsio.FILES.fsync(fd)
        except BaseException:
            fsio.FILES.close(fd)
            raise
        return cls(path, fd), changes

    def append(self, change: Change) -> int:
        """Write and fsync one record; on any failure cut the file back (nothing half-written stays)."""
        record = frame(change.encode())
        if self._dirty:  # an earlier failure's bytes are still there: cut them first, or refuse
            self._cut_back()
            if self._dirty:
                raise OSError(errno.EIO, "the log could not be cut back after an earlier failed write")
        if self._dir_unsynced:  # the emptied log's name must be durable before a record in it is
            fsync_dir(self.path.parent)
            self._dir_unsynced = False
        try:
            write_all(self._fd, record, self.size)
            fsio.FILES.fsync(self._fd)
        except BaseException:
            self._cut_back()
            raise
        self.size += len(record)
        return len(record)

    @property
    def clean(self) -> bool:
        """The file ends at its last whole record (False: a failed write could not be cut off yet)."""
        return not self._dirty

    def _cut_back(self) -> None:
        try:
            fsio.FILES.ftruncate(self._fd, self.size)
            fsio.FILES.fsync(self._fd)  # a cut that a power loss undoes would bring the refused record back
        except OSError as exc:
            log.error("write-ahead log %s: a failed write could not be cut back (%s); retried before the next",
                      self.path, exc)
            self._dirty = True
        else:
            self._dirty = False

    def reset(self) -> None:
        """An empty log in place of this one (after a snapshot holds everything it held).

        Until the rename the old log stays open and in place: a failure before it leaves the
        log as it was (still whole, its records older than the snapshot), never a closed file
        (#28 finding 5). After the rename the new log is the one written; if the folder's fsync
        fails, the next append does it first.
        """
        tmp = self.path.with_name(self.path.name + ".tmp")
        new = NewFile(tmp, replace=True)
        try:
            new.write(MAGIC)
            fsio.FILES.fsync(new.fd)
            fsio.FILES.replace(tmp, self.path)
        except BaseException:
            new.close()
            try:
                fsio.FILES.unlink(tmp)
            except OSError:
                pass
            raise
        old, self._fd, new.fd = self._fd, new.fd, None
        self.size, self._dirty, self._dir_unsynced = len(MAGIC), False, True
        try:
            fsio.FILES.close(old)
        except OSError:
            pass
        fsync_dir(self.path.parent)
        self._dir_unsynced = False

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fsio.FILES.close(fd)


def _write_empty(path: Path) -> None:
    """A log holding only its header, put in place by rename (never a half-made file)."""
    tmp = path.with_name(path.name + ".tmp")
    new = NewFile(tmp, replace=True)
    try:
        new.write(MAGIC)
        new.commit()
    finally:
        new.close()
    fsio.FILES.replace(tmp, path)
    fsync_dir(path.parent)

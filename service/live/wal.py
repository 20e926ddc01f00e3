"""The write-ahead log: length-prefixed, crc32-checksummed records, fsync before the answer.

File layout: an 8-byte magic, then records ``<u32 length><u32 crc32(payload)><payload>``,
little-endian. A payload is ``<u32 json length><json><float32 vectors>``: the change
(sequence, teacher, ids, texts, attributes, deletes) and the teacher's vectors of its upserts,
so a replay needs no encoder (unless the artifact's teacher changed meanwhile).

A crash mid-append leaves a torn last record: shorter than its length, or complete in
length with a wrong checksum (the file grew but the data never reached the disk). It was
never acknowledged (the answer waits for the fsync), so it is dropped with a log line and
the file cut back to the last whole record. A bad record *followed by* whole records is not
a torn write but damage to acknowledged data: that stops start-up with one sentence.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

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


def read_records(data: bytes) -> tuple[list[bytes], int, Optional[str]]:
    """(whole payloads, end offset of the last whole one, why the rest was dropped or None)."""
    if not data.startswith(MAGIC):
        if MAGIC.startswith(data):  # created, crashed before the magic reached the disk
            return [], 0, "the log's header is incomplete" if data else None
        raise WalCorrupt("the write-ahead log does not start with its header (not a log, or damaged)")
    payloads, offset, end = [], len(MAGIC), len(data)
    while offset < end:
        if end - offset < _HEAD.size:
            return payloads, offset, f"a torn record of {end - offset} bytes at the end"
        length, crc = _HEAD.unpack_from(data, offset)
        body_end = offset + _HEAD.size + length
        if length > MAX_RECORD or body_end > end:
            return payloads, offset, f"a torn record at byte {offset} (length {length}, {end - offset - _HEAD.size} bytes present)"
        payload = data[offset + _HEAD.size:body_end]
        if zlib.crc32(payload) != crc:
            if body_end == end:  # the last record: written in length, not in content
                return payloads, offset, f"a last record at byte {offset} whose checksum does not match"
            raise WalCorrupt(f"the write-ahead log record at byte {offset} fails its checksum and whole records "
                             "follow it: acknowledged changes are damaged")
        payloads.append(payload)
        offset = body_end
    return payloads, offset, None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Wal:
    """The open log: ``append`` returns once the record is on disk."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = open(self.path, "ab")
        self.size = self._file.tell()

    @classmethod
    def open(cls, path: Path) -> tuple["Wal", list[Change]]:
        """Open (or create) the log; return it and its whole records, a torn tail cut off."""
        path = Path(path)
        if not path.exists():
            _write_empty(path)
        data = path.read_bytes()
        payloads, good, dropped = read_records(data)
        if dropped:
            log.warning("write-ahead log %s: dropped %s (%d bytes; a crash mid-write, never acknowledged); "
                        "%d whole records kept", path, dropped, len(data) - good, len(payloads))
            if good == 0:
                _write_empty(path)
            else:
                with open(path, "r+b") as handle:
                    handle.truncate(good)
                    handle.flush()
                    os.fsync(handle.fileno())
        return cls(path), [Change.decode(p) for p in payloads]

    def append(self, change: Change) -> int:
        """Write and fsync one record; on any failure cut the file back (nothing half-written stays)."""
        record = frame(change.encode())
        before = self.size
        try:
            self._file.write(record)
            self._file.flush()
            os.fsync(self._file.fileno())
        except BaseException:
            try:
                self._file.truncate(before)
                self._file.seek(before)
            except OSError:
                pass
            raise
        self.size = before + len(record)
        return len(record)

    def reset(self) -> None:
        """An empty log in place of this one (after a snapshot holds everything it held)."""
        self._file.close()
        _write_empty(self.path)
        self._file = open(self.path, "ab")
        self.size = self._file.tell()

    def close(self) -> None:
        self._file.close()


def _write_empty(path: Path) -> None:
    """A log holding only its header, put in place by rename (never a half-made file)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(MAGIC)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)

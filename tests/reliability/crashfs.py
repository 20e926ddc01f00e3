"""A recording file layer and the states a power cut can leave (after ALICE and CrashMonkey).

``RecordingFiles`` replaces ``service.live.fsio.FILES``: each mutating call is performed for
real (so the code under test runs as usual) and logged as an operation on a model of the
file system: inodes, directory entries, file bytes. ``crash_states`` then replays the log and,
after every operation, yields the states the disk may hold if power failed right there:

- what the fsyncs made durable, nothing else (every unsynced write dropped);
- that, plus each ordered prefix of the operations not yet made durable (the disk got some
  of them, in order);
- that, plus every unsynced change to directories but none to file data (names persisted
  before the bytes: the classic rename-before-data reordering);
- the last unsynced write torn: half of its bytes, or its length in zeros (the file grew,
  the data never came).

Durability rules, the conservative POSIX reading (ALICE's, not ext4's kinder one): an fsync
of a file makes its bytes and length durable, not its name; an fsync of a directory makes
the creations, renames and removals in it durable, in the order they happened. A new
inode's bytes are empty until an fsync of it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

from service.live.fsio import Files

ROOT = 0
DATA_OPS = ("write", "trunc")


@dataclass
class Op:
    kind: str  # create mkdir write trunc fsync rename unlink rmdir mark
    args: tuple
    callers: tuple = ()  # qualified names of the calling functions, innermost first

    @property
    def data(self) -> bool:
        return self.kind in DATA_OPS

    def dirs(self) -> tuple:
        """The directories whose entries this operation changes."""
        if self.kind in ("create", "mkdir", "unlink", "rmdir"):
            return (self.args[0],)
        if self.kind == "rename":
            return (self.args[0], self.args[2])
        return ()


@dataclass
class Node:
    dir: bool
    data: bytearray = field(default_factory=bytearray)
    entries: dict = field(default_factory=dict)

    def copy(self) -> "Node":
        return Node(self.dir, bytearray(self.data), dict(self.entries))


def apply(state: dict, op: Op) -> None:
    """One operation onto a state (inode number -> Node)."""
    k, a = op.kind, op.args
    if k in ("create", "mkdir"):
        parent, name, ino = a
        state.setdefault(parent, Node(True)).entries[name] = ino
        state.setdefault(ino, Node(k == "mkdir"))
    elif k == "write":
        ino, offset, data = a
        buf = state.setdefault(ino, Node(False)).data
        if len(buf) < offset:
            buf.extend(bytes(offset - len(buf)))
        buf[offset:offset + len(data)] = data
    elif k == "trunc":
        ino, size = a
        buf = state.setdefault(ino, Node(False)).data
        del buf[size:]
        buf.extend(bytes(size - len(buf)))
    elif k == "rename":
        src, sname, dst, dname = a
        ino = state[src].entries.pop(sname)
        state.setdefault(dst, Node(True)).entries[dname] = ino
    elif k in ("unlink", "rmdir"):
        state[a[0]].entries.pop(a[1], None)


class RecordingFiles(Files):
    """``service.live.fsio.Files`` that performs each call and logs it on the model.

    ``skip(op)``: leave a call out of the log (it still runs): what the disk would see if that
    line were deleted from the code. ``fail_write(op)``: write half of that write, then fail
    with ENOSPC (a full disk after some bytes reached the file).
    """

    def __init__(self, root: Path, skip: Optional[Callable[[Op], bool]] = None,
                 fail_write: Optional[Callable[[Op], bool]] = None, existing: Optional[dict] = None):
        self.root = Path(os.path.abspath(root))
        self.ops: list[Op] = []
        self.skip = skip or (lambda op: False)
        self.fail_write = fail_write or (lambda op: False)
        self.live = {ROOT: Node(True)}  # the model of what the process sees now
        self.fds: dict[int, int] = {}
        self._next = 1
        for path in sorted(existing or {}):  # files already on disk (and durable) before the record
            parent = self._walk(self.root / path)[0]
            ino, self._next = self._next, self._next + 1
            self.live[parent].entries[Path(path).name] = ino
            data = existing[path]
            self.live[ino] = Node(True) if data is None else Node(False, bytearray(data))
        self.initial = {ino: node.copy() for ino, node in self.live.items()}

    # ---- the model ----

    def _walk(self, path: Path) -> tuple[int, str]:
        """(inode of the parent directory, last name) of a path under the root."""
        parts = Path(os.path.abspath(path)).relative_to(self.root).parts
        ino = ROOT
        for part in parts[:-1]:
            ino = self.live[ino].entries[part]
        return ino, parts[-1]

    def _ino(self, path: Path) -> int:
        if Path(os.path.abspath(path)) == self.root:
            return ROOT
        parent, name = self._walk(path)
        return self.live[parent].entries[name]

    @staticmethod
    def _callers(skip: int = 3) -> tuple:
        frame, callers = sys._getframe(skip), []  # past _callers, _log and the method itself
        while frame is not None and len(callers) < 10:
            callers.append(frame.f_code.co_qualname)
            frame = frame.f_back
        return tuple(callers)

    def _log(self, kind: str, *args, callers: Optional[tuple] = None) -> Op:
        op = Op(kind, args, self._callers() if callers is None else callers)
        apply(self.live, op)
        if not self.skip(op):
            self.ops.append(op)
        return op

    def mark(self, label) -> None:
        self.ops.append(Op("mark", (label,)))

    # ---- the calls ----

    def open(self, path, flags, mode=0o644):
        existed = os.path.lexists(path)
        fd = super().open(path, flags, mode)
        if not existed:
            parent, name = self._walk(path)
            ino, self._next = self._next, self._next + 1
            self._log("create", parent, name, ino)
        else:
            ino = self._ino(path)
            if flags & os.O_TRUNC:
                self._log("trunc", ino, 0)
        self.fds[fd] = ino
        return fd

    def pwrite(self, fd, data, offset):
        data, callers = bytes(data), self._callers(2)  # called from pwrite, not through _log
        if self.fail_write(Op("write", (self.fds[fd], offset, data), callers)):
            half = data[:len(data) // 2]
            super().pwrite(fd, half, offset)
            self._log("write", self.fds[fd], offset, half, callers=callers)
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        n = super().pwrite(fd, data, offset)
        self._log("write", self.fds[fd], offset, data[:n], callers=callers)
        return n

    def ftruncate(self, fd, size):
        super().ftruncate(fd, size)
        self._log("trunc", self.fds[fd], size)

    def fsync(self, fd):
        super().fsync(fd)
        self._log("fsync", self.fds[fd])

    def close(self, fd):
        super().close(fd)
        self.fds.pop(fd, None)

    def replace(self, src, dst):
        sp, sn = self._walk(src)
        dp, dn = self._walk(dst)
        super().replace(src, dst)
        self._log("rename", sp, sn, dp, dn)

    def mkdir(self, path):
        super().mkdir(path)
        parent, name = self._walk(path)
        ino, self._next = self._next, self._next + 1
        self._log("mkdir", parent, name, ino)

    def unlink(self, path):
        parent, name = self._walk(path)
        super().unlink(path)
        self._log("unlink", parent, name)

    def rmdir(self, path):
        parent, name = self._walk(path)
        super().rmdir(path)
        self._log("rmdir", parent, name)


# ---- the states a power cut leaves ----

@dataclass
class CrashState:
    after: int  # operations performed (0: none)
    marks: list  # the marks logged before the cut
    how: str
    files: dict  # relative path -> bytes (files) or None (folders)

    def digest(self) -> str:
        h = hashlib.sha256()
        for path in sorted(self.files):
            h.update(path.encode() + b"\0" + (b"D" if self.files[path] is None else b"F" + self.files[path]) + b"\1")
        return h.hexdigest()

    def write(self, where: Path) -> None:
        where.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.files):
            if self.files[path] is None:
                (where / path).mkdir(parents=True, exist_ok=True)
            else:
                (where / path).parent.mkdir(parents=True, exist_ok=True)
                (where / path).write_bytes(self.files[path])


def _tree(state: dict) -> dict:
    out: dict = {}

    def walk(ino: int, prefix: str) -> None:
        for name, child in state[ino].entries.items():
            path = f"{prefix}{name}"
            node = state.get(child, Node(False))
            if node.dir:
                out[path] = None
                walk(child, path + "/")
            else:
                out[path] = bytes(node.data)
    walk(ROOT, "")
    return out


def _with(durable: dict, ops: list[Op]) -> dict:
    state = {ino: node.copy() for ino, node in durable.items()}
    for op in ops:
        apply(state, op)
    return state


def crash_states(ops: list[Op], initial: Optional[dict] = None) -> Iterator[CrashState]:
    """Every state a power cut after each operation may leave (duplicates within a cut removed);
    ``initial``: what was durable before the first operation (``RecordingFiles.initial``)."""
    durable = {ino: node.copy() for ino, node in (initial or {ROOT: Node(True)}).items()}
    pending: list[Op] = []
    kinds: dict[int, bool] = {ino: node.dir for ino, node in durable.items()}  # inode -> is a directory
    marks: list = []
    for i in range(len(ops) + 1):
        seen: set[str] = set()

        def emit(how: str, extra: list[Op]) -> Iterator[CrashState]:
            cs = CrashState(i, list(marks), how, _tree(_with(durable, extra)))
            d = cs.digest()
            if d not in seen:
                seen.add(d)
                yield cs

        for k in range(len(pending) + 1):
            yield from emit(f"synced + {k} of {len(pending)} pending in order", pending[:k])
        yield from emit("synced + pending names, no pending data", [op for op in pending if not op.data])
        writes = [j for j, op in enumerate(pending) if op.kind == "write" and op.args[2]]
        if writes:
            j = writes[-1]
            ino, offset, data = pending[j].args
            half = Op("write", (ino, offset, data[:len(data) // 2]))
            zeros = Op("write", (ino, offset, bytes(len(data))))
            yield from emit("last write torn (half)", pending[:j] + [half])
            yield from emit("last write torn (zeros)", pending[:j] + [zeros])
        if i == len(ops):
            return
        op = ops[i]
        if op.kind == "mark":
            marks.append(op.args[0])
            continue
        if op.kind in ("create", "mkdir"):
            kinds[op.args[2]] = op.kind == "mkdir"
        if op.kind != "fsync":
            pending.append(op)
            continue
        ino = op.args[0]
        if kinds.get(ino, False):  # a directory: its entries, in order
            done = [p for p in pending if ino in p.dirs()]
        else:  # a file: its bytes and length
            done = [p for p in pending if p.data and p.args[0] == ino]
        for p in done:
            apply(durable, p)
        pending = [p for p in pending if not any(p is d for d in done)]

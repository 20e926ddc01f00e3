"""Every change the live state makes on disk goes through ``FILES``: one seam, for one reason.

Crash consistency is a property of the *sequence* of writes, fsyncs and renames, which a
kill -9 cannot test (the page cache survives it). With every mutating call in one place, a
test swaps ``FILES`` for a recorder and replays the states a power cut could leave
(tests/reliability/test_power_loss.py). Reads go straight to the OS: they change nothing.

Writes are unbuffered (``os.pwrite`` at a known offset): a failed write leaves no bytes in a
user-space buffer for the next write to carry out (#28 finding 4).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


class Files:
    """The mutating system calls, one method each (the recorder overrides them all)."""

    def open(self, path: Path, flags: int, mode: int = 0o644) -> int:
        return os.open(path, flags, mode)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        return os.pwrite(fd, data, offset)

    def ftruncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def replace(self, src: Path, dst: Path) -> None:
        os.replace(src, dst)

    def mkdir(self, path: Path) -> None:
        os.mkdir(path)

    def unlink(self, path: Path) -> None:
        os.unlink(path)

    def rmdir(self, path: Path) -> None:
        os.rmdir(path)


FILES = Files()


def write_all(fd: int, data: bytes, offset: int) -> None:
    """All of ``data`` at ``offset`` (a short write is continued, an error raised)."""
    view = memoryview(data)
    while view:
        n = FILES.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def fsync_dir(path: Path) -> None:
    """Make the directory's entries durable: a created, renamed or removed name inside it."""
    fd = FILES.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        FILES.fsync(fd)
    finally:
        FILES.close(fd)


class NewFile:
    """A file created for writing from the start (unbuffered); ``commit`` fsyncs and closes it."""

    def __init__(self, path: Path, *, replace: bool = False):
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if replace else os.O_EXCL)
        self.fd = FILES.open(path, flags)
        self.offset = 0

    def write(self, data: bytes) -> int:  # what json/np.save call
        data = bytes(data)
        write_all(self.fd, data, self.offset)
        self.offset += len(data)
        return len(data)

    def commit(self) -> None:
        FILES.fsync(self.fd)
        self.close()

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            FILES.close(fd)


def make_dirs(path: Path) -> None:
    """``path`` and any missing parent, each one's name made durable in its parent."""
    path = Path(path)
    if path.is_dir():
        return
    make_dirs(path.parent)
    try:
        FILES.mkdir(path)
    except FileExistsError:
        return
    fsync_dir(path.parent)


def temp_dir(parent: Path, prefix: str) -> Path:
    """A new, uniquely named folder in ``parent`` (not yet durable: its rename will be)."""
    while True:
        path = Path(parent) / f"{prefix}{secrets.token_hex(6)}"
        try:
            FILES.mkdir(path)
            return path
        except FileExistsError:
            continue


def remove_tree(path: Path) -> None:
    """``path`` and everything under it (files and folders only; nothing follows a link)."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        FILES.unlink(path)
        return
    for child in path.iterdir():
        remove_tree(child)
    FILES.rmdir(path)

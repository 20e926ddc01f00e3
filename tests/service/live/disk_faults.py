"""Real disk faults for the live-state tests: a full file system, a file-size limit.

``small_disk`` mounts a tmpfs of a few pages where this process may (root, or a user
namespace that allows it): writes there fail with ENOSPC after the bytes that still fit
reached the file, as on a full disk. ``file_size_limit`` sets RLIMIT_FSIZE (any user): a
write that crosses the limit writes what fits, and the next one fails with EFBIG. Both
put bytes in the file *before* the failure, which is what a rollback must undo.
"""

from __future__ import annotations

import contextlib
import resource
import signal
import subprocess
from pathlib import Path
from typing import Iterator, Optional

PAGE = 4096


@contextlib.contextmanager
def small_disk(path: Path, size: int = 64 * 1024) -> Iterator[Optional[Path]]:
    """A tmpfs of ``size`` bytes mounted at ``path`` (None when mounting is not allowed here)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True).returncode == 0
    try:
        yield path if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path, leave: int = 0) -> Path:
    """Take every free page of ``disk`` but ``leave`` with one file (remove it to free them again)."""
    filler = disk / f"filler-{len(list(disk.glob('filler-*')))}"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * PAGE)
        except OSError:
            pass
        handle.truncate(max(0, handle.tell() - leave * PAGE))  # a tmpfs frees the pages cut off
    return filler


def pages(*paths: Path) -> int:
    """The pages a tmpfs needs for these files (and every file under these folders)."""
    files = [f for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()]
    return sum(-(-f.stat().st_size // PAGE) for f in files)


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """No file of this process grows past ``limit`` bytes; a write that would fails with EFBIG."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of the signal that kills
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)

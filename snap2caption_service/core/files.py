"""Durable local files: one owner per file (an flock naming its holder), and a folder fsync so
a create or rename survives a crash. Used by the feedback log's writer and its publisher."""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path


def lock_exclusive(lock_path: Path, timeout_s: float, what: str) -> int:
    """An open fd holding an exclusive flock on ``lock_path`` (our pid written in it), waiting up
    to ``timeout_s``; raises BlockingIOError naming the holder's pid after that."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + max(0.0, timeout_s)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise BlockingIOError(
                    errno.EWOULDBLOCK,
                    f"{what} is in use by another process (pid {holder}; lock file {lock_path}); "
                    f"one process at a time may own it: give each process its own file",
                ) from None
            time.sleep(0.05)
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def fsync_dir(path: Path) -> None:
    """Make a file's creation or rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

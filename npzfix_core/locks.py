"""Writers lock the NPZ itself with ``flock`` (no sidecar files), waiting a bounded time and saying who holds it."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
import time
from typing import Iterator

from npzfix_core.errors import NpzError

LOCK_TIMEOUT_ENV = "NPZFIX_LOCK_TIMEOUT_S"  # read by the edges into Settings.lock_timeout_s
DEFAULT_LOCK_TIMEOUT_S = 300.0  # another writer holds a file for a few ms; minutes means something is stuck
log = logging.getLogger("npzfix")


def open_regular(path: str | os.PathLike) -> int:
    """A read-only descriptor of a regular file; never blocks (a FIFO or device named like an NPZ would)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NpzError(f"{os.fspath(path)} is not a regular file")
    return fd


def lock_holder(fd: int) -> str:
    """Who holds an flock on this file, from /proc/locks (Linux; '' when unknown)."""
    st = os.fstat(fd)
    try:
        with open("/proc/locks") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 5 and parts[1] == "FLOCK" and parts[5].rsplit(":", 1)[-1] == str(st.st_ino):
                    return f"pid {parts[4]}"
    except OSError:
        pass
    return ""


def _flock_within(fd: int, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    delay, warned = 0.005, False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = lock_holder(fd) or "another process"
                raise NpzError(
                    f"locked by {holder} for over {timeout:.0f} s (raise {LOCK_TIMEOUT_ENV} to wait longer)"
                ) from None
            if not warned and delay >= 0.5:
                log.info("waiting for the lock on %s (held by %s)", path, lock_holder(fd) or "another writer")
                warned = True
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


@contextlib.contextmanager
def locked(path: str | os.PathLike, timeout: float = DEFAULT_LOCK_TIMEOUT_S) -> Iterator[None]:
    """Exclusive lock on the NPZ itself, waited for at most ``timeout`` s; retried if the path was replaced."""
    path = os.fspath(path)
    while True:
        fd = open_regular(path)
        try:
            _flock_within(fd, path, timeout)
            held, now = os.fstat(fd), os.stat(path)
        except BaseException:
            os.close(fd)
            raise
        if (held.st_ino, held.st_dev) == (now.st_ino, now.st_dev):
            break
        os.close(fd)
    try:
        yield
    finally:
        os.close(fd)

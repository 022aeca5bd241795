"""Worker processes that one file cannot take down together, and that never outlive their parent.

``ProcessPoolExecutor`` breaks as a whole when one worker dies (a segfault in a C library, the OOM
killer): every file in flight fails and nothing more can be submitted. Here each worker holds one file at
a time over its own pipe, so a death names exactly the file it held; that worker is replaced and the run
goes on. Workers ask the kernel to kill them when their parent dies (``PR_SET_PDEATHSIG``), so a
``kill -9`` of the main process leaves no orphans behind.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import stat
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Iterator

log = logging.getLogger("npzfix")
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Linux: SIGKILL this process when its parent exits (a no-op elsewhere)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)


def _serve(conn: Connection, parent_pid: int, fn: Callable[..., Any], initializer: Callable[[], None] | None) -> None:
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if initializer is not None:
        initializer()
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        conn.send(fn(*task))


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


class _Worker:
    def __init__(self, ctx, fn, initializer):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, os.getpid(), fn, initializer), daemon=True)
        self.proc.start()
        child.close()
        self.task_key: Any = None  # what it holds now; None when idle


class WorkerPool:
    """``n`` spawned processes running ``fn``; ``submit`` hands a task to an idle worker, ``results`` yields
    ``(key, result, None)`` or ``(key, None, reason)`` when the worker died holding that task."""

    def __init__(self, n: int, fn: Callable[..., Any], initializer: Callable[[], None] | None = None):
        self._ctx = multiprocessing.get_context("spawn")
        self._fn, self._init = fn, initializer
        self._workers = [_Worker(self._ctx, fn, initializer) for _ in range(n)]

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def busy(self) -> int:
        return sum(w.task_key is not None for w in self._workers)

    @property
    def idle(self) -> int:
        return len(self._workers) - self.busy

    def submit(self, key: Any, args: tuple) -> None:
        w = next(w for w in self._workers if w.task_key is None)
        w.task_key = key
        try:
            w.conn.send(args)
        except (BrokenPipeError, OSError):
            pass  # it died idle: ``wait`` sees its exit and reports this task

    def wait(self) -> Iterator[tuple[Any, Any, str | None]]:
        """Block until at least one busy worker finishes or dies; yield what finished."""
        busy = [w for w in self._workers if w.task_key is not None]
        if not busy:
            return
        ready = set(wait([w.conn for w in busy] + [w.proc.sentinel for w in busy]))
        for i, w in enumerate(self._workers):
            if w.task_key is None or (w.conn not in ready and w.proc.sentinel not in ready):
                continue
            key, w.task_key = w.task_key, None
            try:
                if w.conn.poll():
                    yield key, w.conn.recv(), None
                    continue
            except (EOFError, OSError):
                pass
            w.proc.join(5)
            reason = f"worker process {describe_exit(w.proc.exitcode)} while processing this file"
            log.error("%s: %s; starting a new worker", key, reason)
            w.conn.close()
            self._workers[i] = _Worker(self._ctx, self._fn, self._init)
            yield key, None, reason

    def close(self) -> None:
        for w in self._workers:
            try:
                w.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for w in self._workers:
            w.proc.join(5)
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join()
            w.conn.close()


class KillerRegistry:
    """Files that killed a worker, remembered across runs so that a rerun does not die at the same place.

    Keyed by the file and the size and mtime of its source: fixing the source (or ``retry``) tries it
    again. One small JSON-lines file outside the data directories (``Settings.state_dir``).
    """

    def __init__(self, state_dir: str, retry: bool = False, read_only: bool = False):
        self.path = os.path.join(state_dir, "worker_killers.jsonl")
        self.retry = retry
        self.read_only = read_only  # a dry run reads what earlier runs learnt and writes nothing
        self._known: dict[str, str] | None = None

    @staticmethod
    def _key(npz: str, source: str | None) -> str:
        try:
            st = os.stat(source) if source else None
        except OSError:
            st = None
        return f"{os.path.realpath(npz)}|{source}|{st.st_size if st else ''}|{st.st_mtime_ns if st else ''}"

    def _load(self) -> dict[str, str]:
        if self._known is None:
            import json

            from npzfix_core.errors import NpzError
            from npzfix_core.locks import open_regular

            self._known = {}
            try:
                fd = open_regular(self.path)  # never blocks: a FIFO or device there is refused, not read
            except FileNotFoundError:
                return self._known
            except (OSError, NpzError) as exc:
                log.warning("%s: files that killed a worker are not remembered (%s)", self.path, exc)
                self.read_only = True
                return self._known
            with os.fdopen(fd, encoding="utf-8", errors="surrogateescape") as f:
                for line in f:  # a torn last line (a crash mid-write) is skipped; the next entry starts anew
                    try:
                        rec = json.loads(line)
                        self._known[rec["key"]] = rec["reason"]
                    except (ValueError, KeyError, TypeError):
                        continue
        return self._known

    def killed_before(self, npz: str, source: str | None) -> str | None:
        """The reason a worker died on this file in an earlier run, unless retrying."""
        if self.retry or not self._load():  # nothing remembered: no stat per file
            return None
        return self._known.get(self._key(npz, source))

    def remember(self, npz: str, source: str | None, reason: str) -> None:
        import json

        key = self._key(npz, source)
        self._load()[key] = reason
        if self.read_only:
            return
        line = (json.dumps({"key": key, "reason": reason}) + "\n").encode("utf-8", "surrogateescape")
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o644)
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise OSError(f"{self.path} is not a regular file")
                if st.st_size and os.pread(fd, 1, st.st_size - 1) != b"\n":
                    line = b"\n" + line  # a line torn by a crash must not swallow this one
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("cannot remember %s in %s: %s", npz, self.path, exc)

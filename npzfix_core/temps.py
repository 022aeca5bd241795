"""Temp files of an atomic replace: named beside their target so a killed writer's leftovers can be found and
removed (only when no live writer holds the target's lock)."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os

from npzfix_core.errors import NpzError
from npzfix_core.locks import open_regular

TMP_MARKER = ".npzfix-tmp-"
NAME_MAX = 255  # bytes in one path component (Linux file systems)
log = logging.getLogger("npzfix")


def temp_prefix(name: str) -> str:
    """``.<name>.npzfix-tmp-`` for the temp file beside ``name``; a long name is cut and hashed so that the
    temp (plus mkstemp's 8 random characters) stays within NAME_MAX."""
    prefix = f".{name}{TMP_MARKER}"
    if len(os.fsencode(prefix)) + 8 <= NAME_MAX:
        return prefix
    digest = hashlib.sha1(os.fsencode(name)).hexdigest()[:16]
    head = os.fsencode(name)[:150].decode(errors="ignore") if name.isascii() else name[:40]
    return f".{head}~{digest}{TMP_MARKER}"


def _temp_target(temp_name: str, names: list[str]) -> str | None:
    """The file name a temp belongs to (among ``names`` when its prefix was hashed)."""
    stem = temp_name[1:].split(TMP_MARKER, 1)[0]
    if "~" in stem and len(stem.rsplit("~", 1)[1]) == 16:
        return next((n for n in names if temp_prefix(n) == f".{stem}{TMP_MARKER}"), stem)
    return stem


_SWEPT_TARGET_DIRS: set[str] = set()  # per process: each target directory is swept once, not once per file


def sweep_target_dir(directory: str) -> None:
    """Temps of a symlinked NPZ live beside its target, where a run's own sweep never looks: sweep that
    directory the first time this process writes there (a live writer's temps are left, as always)."""
    if directory in _SWEPT_TARGET_DIRS:
        return
    _SWEPT_TARGET_DIRS.add(directory)
    sweep_and_log(directory)


def sweep_and_log(directory: str | os.PathLike) -> list[str]:
    """``sweep_stale_temps``, each removal logged: what every runner does before writing into a directory."""
    removed = sweep_stale_temps(directory)
    for p in removed:
        log.warning("removed a temp file left by an interrupted write: %s", p)
    return removed


def sweep_stale_temps(directory: str | os.PathLike) -> list[str]:
    """Remove temp files left by killed writers; a live writer holds its target's lock, so is left alone.

    Never blocks and never fails the run: a target that is not a regular file cannot have a live writer,
    and an entry that cannot be removed (a directory, another user's file) is logged and left.
    """
    removed: list[str] = []
    directory = os.fspath(directory)
    try:
        with os.scandir(directory) as it:
            entries = list(it)
    except OSError:
        return removed
    names = [e.name for e in entries]
    for entry in entries:
        if not (entry.name.startswith(".") and TMP_MARKER in entry.name):
            continue
        target = os.path.join(directory, _temp_target(entry.name, names))
        fd = None
        try:
            fd = open_regular(target)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (FileNotFoundError, NpzError):
            pass  # no target, or not a file we write: nobody writes this temp
        except OSError as exc:
            if fd is not None:
                os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                log.warning("left %s: cannot check its target: %s", entry.path, exc)
            continue  # a live writer holds the target
        try:
            if entry.is_dir(follow_symlinks=False):
                log.warning("left %s: a directory named like an npzfix temp file", entry.path)
                continue
            os.unlink(entry.path)
            removed.append(entry.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove stale temp %s: %s", entry.path, exc)
        finally:
            if fd is not None:
                os.close(fd)
    return removed

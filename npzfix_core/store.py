"""NPZ files as zip archives: cheap partial reads and atomic, merged, locked updates.

An NPZ is a zip of ``<key>.npy`` members. Reading a flag should not cost a full
load, and rewriting three small keys should not decode (or even re-deflate) the
megabytes of features beside them: unchanged members are copied as raw zip
bytes, CRC and all. Writers lock the NPZ file itself (no sidecar files), re-read
it under the lock and merge, so an edges run and a features run on the same file
never lose each other's keys.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import io
import logging
import os
import stat
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import numpy as np

from npzfix_core import zipraw

TMP_MARKER = ".npzfix-tmp-"
NAME_MAX = 255  # bytes in one path component (Linux file systems)
LOCK_TIMEOUT_ENV = "NPZFIX_LOCK_TIMEOUT_S"
DEFAULT_LOCK_TIMEOUT_S = 300.0  # another writer holds a file for a few ms; minutes means something is stuck
log = logging.getLogger("npzfix")


class NpzError(Exception):
    """A file that cannot be read or updated safely; the message is the reason."""


@dataclass(frozen=True)
class MemberInfo:
    key: str
    shape: tuple[int, ...]
    dtype: np.dtype


@dataclass(frozen=True)
class UpdateResult:
    written: tuple[str, ...]
    bytes_before: int
    bytes_after: int


def _key(name: str) -> str:
    return name[:-4] if name.endswith(".npy") else name


class _ObjectArray(ValueError):
    """An npy header asks for Python objects: loading it would mean unpickling."""


def _open_zip(path: str | os.PathLike) -> zipfile.ZipFile:
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise  # a vanished file, not a damaged one
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise NpzError(f"not a readable NPZ (zip) file: {exc}") from exc
    for info in zf.infolist():
        if info.flag_bits & 0x1:
            zf.close()
            raise NpzError(f"encrypted member {info.filename!r}")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            zf.close()
            raise NpzError(f"unsupported compression in member {info.filename!r}")
    return zf


def _pickle_error(name: str) -> NpzError:
    return NpzError(f"member {name!r} holds Python objects (pickle); refusing to load it")


def _header_len(head: bytes) -> int:
    """Length of an npy header (magic, version, size, dict) from its first 12 bytes."""
    if head[:6] != b"\x93NUMPY" or len(head) < 10:
        raise ValueError("missing .npy magic")
    if head[6] == 1:
        return 10 + int.from_bytes(head[8:10], "little")
    return 12 + int.from_bytes(head[8:12], "little")


def _member_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> MemberInfo:
    try:
        with zf.open(info) as fp:
            head = fp.read(12)
            head += fp.read(_header_len(head) - len(head))
        shape, _, dtype = _parse_header(head)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise NpzError(f"member {info.filename!r} is not a valid .npy: {exc}") from exc
    if dtype.hasobject:
        raise _pickle_error(info.filename)
    return MemberInfo(_key(info.filename), tuple(shape), dtype)


def inspect(path: str | os.PathLike) -> dict[str, MemberInfo]:
    """Keys with shape and dtype, from the npy headers only (no array data read)."""
    with _open_zip(path) as zf:
        return {_key(i.filename): _member_header(zf, i) for i in zf.infolist()}


_SMALL = 1 << 16


@functools.lru_cache(maxsize=1024)
def _parse_header(header: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """npy header dict -> (shape, fortran_order, dtype); flags and names repeat, so parse each once."""
    fp = io.BytesIO(header)
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fp)
    return np.lib.format.read_array_header_2_0(fp)


def _decode_small(raw: bytes) -> np.ndarray:
    """A small member's bytes -> array, without NumPy's per-call header ``literal_eval``."""
    hlen = _header_len(raw[:12])
    shape, fortran, dtype = _parse_header(bytes(raw[:hlen]))
    if dtype.hasobject:
        raise _ObjectArray()
    count = int(np.prod(shape, dtype=np.int64))
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=hlen).copy()
    return data.reshape(shape[::-1]).T if fortran else data.reshape(shape)


def read_flags(path: str | os.PathLike, keys: list[str] | tuple[str, ...]) -> dict[str, np.ndarray]:
    """``read_arrays`` for a few small keys, fast: one read of the zip's tail, one per member.

    This is the "already done?" check run on every file of a million-file pass.
    """
    fd = open_regular(path)
    try:
        directory = zipraw.read_directory(fd, os.fstat(fd).st_size)
        if directory is None:
            return read_arrays(path, keys)
        out = {}
        for key in keys:
            e = directory.get(key + ".npy")
            if e is None:
                continue
            if e.size > _SMALL:
                return read_arrays(path, keys)
            try:
                out[key] = _decode_small(zipraw.read_member(fd, e))
            except _ObjectArray as exc:
                raise _pickle_error(f"{key}.npy") from exc
            except ValueError as exc:  # ZipRawError, bad npy header
                raise NpzError(f"member {key}.npy is damaged: {exc}") from exc
        return out
    finally:
        os.close(fd)


def read_arrays(path: str | os.PathLike, keys: list[str] | tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """Decode only ``keys`` (all when None); absent keys are simply missing from the result."""
    out: dict[str, np.ndarray] = {}
    with _open_zip(path) as zf:
        names = {_key(i.filename): i for i in zf.infolist()}
        for key in names if keys is None else keys:
            info = names.get(key)
            if info is None:
                continue
            try:
                if info.file_size <= _SMALL:
                    out[key] = _decode_small(zf.read(info))
                    continue
                _member_header(zf, info)  # refuses a pickled member before its data is read
                with zf.open(info) as fp:
                    out[key] = np.lib.format.read_array(fp, allow_pickle=False)
            except _ObjectArray as exc:
                raise _pickle_error(info.filename) from exc
            except ValueError as exc:
                raise NpzError(f"member {info.filename!r} is damaged: {exc}") from exc
            except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
                raise NpzError(f"member {info.filename!r} is damaged: {exc}") from exc
    return out


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
def locked(path: str | os.PathLike, timeout: float | None = None) -> Iterator[None]:
    """Exclusive lock on the NPZ itself, waited for at most ``timeout`` s; retried if the path was replaced."""
    path = os.fspath(path)
    timeout = float(os.environ.get(LOCK_TIMEOUT_ENV, DEFAULT_LOCK_TIMEOUT_S)) if timeout is None else timeout
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


def _keep_attributes(src_fd: int, dst_fd: int, st: os.stat_result) -> None:
    """The replacement keeps the replaced file's permission bits, owner and group (where we may set them:
    as root, or our own group) and extended attributes (where the file system has them). Hard links to
    the old file are not followed: they keep the old content (an atomic replace makes a new inode)."""
    os.fchmod(dst_fd, st.st_mode & 0o7777)
    with contextlib.suppress(PermissionError):
        os.fchown(dst_fd, st.st_uid, st.st_gid)
    os.fchmod(dst_fd, st.st_mode & 0o7777)  # chown may clear setgid; put the bits back
    try:
        names = os.listxattr(src_fd)
    except OSError:
        return
    for name in names:
        with contextlib.suppress(OSError):
            os.setxattr(dst_fd, name, os.getxattr(src_fd, name))


def _npy_parts(array: np.ndarray) -> tuple[bytes, np.ndarray]:
    """An .npy file as (header, the array's own memory): a 4 MB feature map is not copied twice to be written."""
    a = np.asanyarray(array)
    if not a.flags.c_contiguous:
        a = a.copy(order="C")
    meta = np.lib.format.header_data_from_array_1_0(a)
    header = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(header, meta)
    except ValueError:  # a header over 64 KiB (huge structured dtypes)
        header = io.BytesIO()
        np.lib.format.write_array_header_2_0(header, meta)
    return header.getvalue(), a.reshape(-1).view(np.uint8)


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def update(
    path: str | os.PathLike,
    arrays: Mapping[str, np.ndarray] | None = None,
    *,
    only_if_present: frozenset[str] | set[str] = frozenset(),
    prepare: Callable[[dict[str, MemberInfo]], Mapping[str, np.ndarray]] | None = None,
    remove: frozenset[str] | set[str] = frozenset(),
    durable: bool = True,
) -> UpdateResult:
    """Atomically set arrays in the NPZ, keeping every other member byte for byte.

    The file is re-read under its lock: keys in ``only_if_present`` are written
    only where it has them, and ``prepare`` (instead of ``arrays``) sees its
    current members (shape, dtype) to shape what it writes. Keys in ``remove``
    (and not written) are dropped: a flag must not outlive what it vouched for. Raises NpzError
    with a reason, or OSError from the file system; the file is then unchanged
    and no temp file remains.
    """
    real = os.path.realpath(path)  # a symlinked cache: update the file it points to, keep the link
    if os.path.dirname(real) != os.path.dirname(os.path.abspath(path)):
        _sweep_target_dir(os.path.dirname(real))
    path = real
    directory, name = os.path.split(path)
    with locked(path):
        st = os.stat(path)
        with open(path, "rb") as src, _open_zip(src) as zf:
            infos = zf.infolist()
            existing = {_key(i.filename): _member_header(zf, i) for i in infos}  # refuses damaged/pickled members
            if prepare is not None:
                chosen = dict(prepare(existing))
            else:
                chosen = {k: v for k, v in (arrays or {}).items() if k not in only_if_present or k in existing}
            for key, value in chosen.items():
                if np.asanyarray(value).dtype.hasobject:
                    raise NpzError(f"refusing to write object array for {key!r}")
            deflate = any(i.compress_type == zipfile.ZIP_DEFLATED for i in infos)
            fd, tmp = tempfile.mkstemp(prefix=temp_prefix(name), dir=directory or ".")
            try:
                with os.fdopen(fd, "wb") as out:
                    writer = zipraw.RawZipWriter(out)
                    for info in infos:
                        if _key(info.filename) not in chosen and _key(info.filename) not in remove:
                            writer.copy_raw(src, info)
                    for key, array in chosen.items():
                        writer.add(f"{key}.npy", _npy_parts(array), deflate)
                    writer.close()
                    out.flush()
                    _keep_attributes(src.fileno(), out.fileno(), st)
                    if durable:
                        os.fsync(out.fileno())
                    size_after = out.tell()
                os.replace(tmp, path)
            except BaseException as exc:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                if isinstance(exc, zipraw.ZipRawError):
                    raise NpzError(str(exc)) from exc
                raise
        if durable:
            _fsync_dir(directory or ".")
    return UpdateResult(tuple(chosen), st.st_size, size_after)


_SWEPT_TARGET_DIRS: set[str] = set()  # per process: each target directory is swept once, not once per file


def _sweep_target_dir(directory: str) -> None:
    """Temps of a symlinked NPZ live beside its target, where a run's own sweep never looks: sweep that
    directory the first time this process writes there (a live writer's temps are left, as always)."""
    if directory in _SWEPT_TARGET_DIRS:
        return
    _SWEPT_TARGET_DIRS.add(directory)
    for p in sweep_stale_temps(directory):
        log.warning("removed a temp file left by an interrupted write: %s", p)


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

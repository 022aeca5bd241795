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
import io
import logging
import os
import secrets
import zipfile
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from npzfix_core import zipraw
from npzfix_core.errors import NpzError
from npzfix_core.members import (  # noqa: F401 (store's API: reading)
    Flags,
    MemberInfo,
    _key,
    _member_header,
    _open_zip,
    content_version,
    inspect,
    read_arrays,
    read_flags,
    read_readable,
)
from npzfix_core.locks import DEFAULT_LOCK_TIMEOUT_S, LOCK_TIMEOUT_ENV, locked, open_regular  # noqa: F401 (store's API)
from npzfix_core.temps import TMP_MARKER, sweep_and_log, sweep_stale_temps, sweep_target_dir, temp_prefix  # noqa: F401

log = logging.getLogger("npzfix")



@dataclass(frozen=True)
class UpdateResult:
    written: tuple[str, ...]
    bytes_before: int
    bytes_after: int


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


def _refuse_objects(arrays: Mapping[str, np.ndarray]) -> None:
    for key, value in arrays.items():
        if np.asanyarray(value).dtype.hasobject:
            raise NpzError(f"refusing to write object array for {key!r}")


def update(
    path: str | os.PathLike,
    arrays: Mapping[str, np.ndarray] | None = None,
    *,
    only_if_present: frozenset[str] | set[str] = frozenset(),
    prepare: Callable[[dict[str, MemberInfo]], Mapping[str, np.ndarray]] | None = None,
    remove: frozenset[str] | set[str] = frozenset(),
    seal: Callable[[dict[str, int]], Mapping[str, np.ndarray]] | None = None,
    durable: bool = True,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
) -> UpdateResult:
    """Atomically set arrays in the NPZ, keeping every other member byte for byte.

    The file is re-read under its lock (waited for at most ``lock_timeout_s``): keys in ``only_if_present`` are written
    only where it has them, and ``prepare`` (instead of ``arrays``) sees its
    current members (shape, dtype) to shape what it writes. Keys in ``remove``
    (and not written) are dropped: a flag must not outlive what it vouched for. ``seal`` gets the CRC-32 of every
    member of the new file (key -> int) and returns small arrays written last (a provenance record naming the
    content it vouches for). Raises NpzError
    with a reason, or OSError from the file system; the file is then unchanged
    and no temp file remains.
    """
    real = os.path.realpath(path)  # a symlinked cache: update the file it points to, keep the link
    if os.path.dirname(real) != os.path.dirname(os.path.abspath(path)):
        sweep_target_dir(os.path.dirname(real))
    path = real
    with locked(path, lock_timeout_s):
        st = os.stat(path)
        with open(path, "rb") as src, _open_zip(src) as zf:
            infos = zf.infolist()
            existing = {_key(i.filename): _member_header(zf, i) for i in infos}  # refuses damaged/pickled members
            if prepare is not None:
                chosen = dict(prepare(existing))
            else:
                chosen = {k: v for k, v in (arrays or {}).items() if k not in only_if_present or k in existing}
            _refuse_objects(chosen)
            deflate = any(i.compress_type == zipfile.ZIP_DEFLATED for i in infos)

            def write(out) -> None:
                _write_merged(out, src, infos, chosen, remove, seal, deflate)
                out.flush()
                _keep_attributes(src.fileno(), out.fileno(), st)

            size_after = _replace(path, write, durable)
    return UpdateResult(tuple(chosen), st.st_size, size_after)


def _write_merged(out, src, infos, chosen: dict, remove, seal, deflate: bool) -> None:
    """The new zip: every member not chosen or removed copied raw (CRC and all), the chosen ones written, then
    what ``seal`` makes of the CRCs (added to ``chosen``)."""
    writer = zipraw.RawZipWriter(out)
    crcs: dict[str, int] = {}
    for info in infos:
        if _key(info.filename) not in chosen and _key(info.filename) not in remove:
            writer.copy_raw(src, info)
            crcs[_key(info.filename)] = info.CRC
    for key, array in chosen.items():
        crcs[key] = writer.add(f"{key}.npy", _npy_parts(array), deflate)
    sealed = dict(seal(crcs)) if seal is not None else {}
    _refuse_objects(sealed)
    for key, array in sealed.items():
        if key in crcs:
            raise NpzError(f"seal would write {key!r} twice")
        writer.add(f"{key}.npy", _npy_parts(array), deflate)
    chosen.update(sealed)
    writer.close()


def _replace(path: str, write: Callable, durable: bool) -> int:
    """``write`` a temp file beside ``path``, fsync it, rename it over ``path``: the file is old or new, never
    torn. The temp, the replace and the cleanup go through one descriptor of the directory: moved or renamed
    meanwhile, the update still lands beside its file, and a failed one leaves no temp there. Returns the size."""
    directory, name = os.path.split(path)
    dfd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd, tmp = create_temp(dfd, temp_prefix(name))
    except BaseException:
        os.close(dfd)
        raise
    try:
        with os.fdopen(fd, "wb") as out:
            write(out)
            if durable:
                os.fsync(out.fileno())
            size = out.tell()
        os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        if durable:
            os.fsync(dfd)
        return size
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dfd)
        if isinstance(exc, zipraw.ZipRawError):
            raise NpzError(str(exc)) from exc
        raise
    finally:
        os.close(dfd)


def create_temp(dir_fd: int, prefix: str) -> tuple[int, str]:
    """A new file ``<prefix><8 random characters>`` (mode 0600, as ``mkstemp``) in the directory ``dir_fd``."""
    for _ in range(100):
        name = prefix + secrets.token_hex(4)
        try:
            return os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dir_fd), name
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temp name for {prefix}*")

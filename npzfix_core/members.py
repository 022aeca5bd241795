"""Reading an NPZ without loading it: its members' headers (key, shape, dtype), a few small members (flags,
provenance) with every member's CRC-32 from the zip directory, or chosen arrays. Pickled (object) members are
listed, never unpickled. ``store`` writes; both are reached through ``store``.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import zipfile
import zlib
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from npzfix_core import zipraw
from npzfix_core.errors import NpzError
from npzfix_core.locks import open_regular

log = logging.getLogger("npzfix")


@dataclass(frozen=True)
class MemberInfo:
    key: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def carried(self) -> bool:
        """A pickled (object-dtype) member: copied byte for byte by every write, never unpickled by npzfix.
        Real caches hold them (``masks``, ``box_prompts_meta``)."""
        return self.dtype.hasobject


class Flags(dict):
    """Members read (key -> array), plus ``crcs``: every member's CRC-32 from the zip directory (key -> int),
    free with the read, so provenance can tell whether what it vouches for changed; and ``carried``: the
    pickled members left unread (``read_readable``)."""

    crcs: dict[str, int]
    carried: tuple[str, ...] = ()


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
    return NpzError(
        f"member {name!r} holds Python objects (pickle) where npzfix must read an array; it is never unpickled"
    )


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
    return MemberInfo(_key(info.filename), tuple(shape), dtype)


def inspect(path: str | os.PathLike) -> dict[str, MemberInfo]:
    """Keys with shape and dtype, from the npy headers only (no array data read); pickled members are listed
    (``MemberInfo.carried``), never loaded."""
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


def content_version(paths: Iterable[str], keys: Iterable[str]) -> str:
    """A digest of the given members of every file (their CRC-32s, from each zip directory: one read of the tail
    per file), by file name: it changes exactly when one of those members changes, whoever wrote it, and not when
    another writer changes other members of the same files (features and edges runs share every file)."""
    import hashlib

    keys = sorted(keys)
    h = hashlib.sha1()
    for p in sorted(paths):
        try:
            crcs = read_flags(p, ()).crcs  # the zip directory only
        except (OSError, NpzError):
            h.update(f"{os.path.basename(p)}\0unreadable\n".encode("utf-8", "surrogateescape"))
            continue
        line = "\0".join([os.path.basename(p), *(f"{crcs.get(k, '-')}" for k in keys)])
        h.update(line.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()[:20]


def read_readable(path: str | os.PathLike) -> Flags:
    """Every member npzfix may read, with the CRCs of all and the names of the pickled ones, left out (carried):
    what a content check looks at."""
    with _open_zip(path) as zf:
        infos = zf.infolist()
        carried = tuple(_key(i.filename) for i in infos if _member_header(zf, i).carried)
        crcs = {_key(i.filename): i.CRC for i in infos}
    out = Flags(read_arrays(path, [k for k in crcs if k not in carried]))
    out.crcs, out.carried = crcs, carried
    return out


def _flags_slowly(path: str | os.PathLike, keys: list[str] | tuple[str, ...]) -> Flags:
    out = Flags(read_arrays(path, keys))
    with _open_zip(path) as zf:
        out.crcs = {_key(i.filename): i.CRC for i in zf.infolist()}
    return out


def read_flags(path: str | os.PathLike, keys: list[str] | tuple[str, ...]) -> Flags:
    """``read_arrays`` for a few small keys, fast: one read of the zip's tail, one per member; with every
    member's CRC-32 (``Flags.crcs``).

    This is the "already done?" check run on every file of a million-file pass.
    """
    fd = open_regular(path)
    try:
        directory = zipraw.read_directory(fd, os.fstat(fd).st_size)
        if directory is None:
            return _flags_slowly(path, keys)
        out = Flags()
        out.crcs = {_key(name): e.crc for name, e in directory.items()}
        for key in keys:
            e = directory.get(key + ".npy")
            if e is None:
                continue
            if e.size > _SMALL:
                return _flags_slowly(path, keys)
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
    """Decode only ``keys``; absent keys are simply missing from the result. A pickled member asked for by name
    fails the read (naming it); with ``keys=None`` every member is read except pickled ones, which are carried
    (see ``inspect``), not npzfix's to open."""
    out: dict[str, np.ndarray] = {}
    with _open_zip(path) as zf:
        names = {_key(i.filename): i for i in zf.infolist()}
        if keys is None:
            keys = [k for k, i in names.items() if not _member_header(zf, i).carried]
        for key in keys:
            info = names.get(key)
            if info is None:
                continue
            try:
                if info.file_size <= _SMALL:
                    out[key] = _decode_small(zf.read(info))
                    continue
                if _member_header(zf, info).carried:  # refused before its data is read
                    raise _ObjectArray()
                with zf.open(info) as fp:
                    out[key] = np.lib.format.read_array(fp, allow_pickle=False)
            except _ObjectArray as exc:
                raise _pickle_error(info.filename) from exc
            except ValueError as exc:
                raise NpzError(f"member {info.filename!r} is damaged: {exc}") from exc
            except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
                raise NpzError(f"member {info.filename!r} is damaged: {exc}") from exc
    return out

"""Dataset layouts -> work items (an NPZ and the image or JSON it is computed from).

Scans stream with ``os.scandir`` in a stable (sorted) order and never follow a
symlink into a directory they have already seen. A missing source is recorded
on its item, never raised for the batch.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

SUFFIXES = ("_features.npz", "_sam2_features.npz")  # preference order when both exist
log = logging.getLogger("npzfix")
IMAGE_EXTS = (".jpg", ".png", ".jpeg", ".JPG", ".PNG", ".JPEG")


@dataclass(frozen=True)
class WorkItem:
    npz: str | None
    source: str | None  # image (features) or JSON (edges)
    stem: str
    problem: str | None = None  # why npz or source is missing


def stem_of(name: str) -> str | None:
    """``sa_1_features.npz`` -> ``sa_1``; None for names that are not feature NPZs."""
    for suffix in (SUFFIXES[1], SUFFIXES[0]):  # longest first
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def _dedup(names: Iterable[str]) -> dict[str, str]:
    """stem -> chosen file name; ``_features`` beats ``_sam2_features``."""
    best: dict[str, str] = {}
    for name in names:
        stem = stem_of(name)
        if stem is None:
            continue
        if stem not in best or name.endswith(SUFFIXES[0]) and not name.endswith(SUFFIXES[1]):
            best[stem] = name
    return best


def npz_names(directory: str, glob: str | None = None) -> list[str]:
    """Names of the feature NPZs directly in ``directory``, de-duplicated, sorted. Names, not paths: a
    listing is the one thing a run holds per file (~70 bytes each), so it stays small at 100,000 files."""
    with os.scandir(directory) as it:
        chosen = _dedup(e.name for e in it if e.is_file() and not e.name.startswith("."))
    names = sorted(chosen.values(), key=lambda n: stem_of(n) or n)
    del chosen
    if glob:
        names = [n for n in names if fnmatch.fnmatch(n, glob)]
    return names


def iter_npz(directory: str, glob: str | None = None) -> Iterator[str]:
    """Paths of the feature NPZs directly in ``directory``, made one at a time from the sorted names."""
    for name in npz_names(directory, glob):
        yield os.path.join(directory, name)


def npz_in_dir(directory: str, glob: str | None = None) -> list[str]:
    """Feature NPZs directly in ``directory``, de-duplicated, sorted by name."""
    return list(iter_npz(directory, glob))


def subdirs(directory: str) -> list[str]:
    """Visible subdirectories, sorted; [] when the directory cannot be listed."""
    try:
        with os.scandir(directory) as it:
            return sorted(e.path for e in it if e.is_dir() and not e.name.startswith("."))
    except OSError:
        return []


def walk_dirs(root: str, children: Callable[[str, os.stat_result], list[str]] | None = None) -> Iterator[str]:
    """Every directory under ``root`` (itself included), depth first, sorted, symlink loops cut.

    ``children(dir, stat)`` may replace the listing (the sensor reuses what it saw last tick).
    """
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            st = os.stat(d)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        yield d
        stack.extend(reversed(children(d, st) if children else subdirs(d)))


def scan_npz(root: str) -> Iterator[str]:
    """Recursive scan for feature NPZs, de-duplicated per directory and stem, in stable order."""
    for d in walk_dirs(root):
        yield from iter_npz(d)


class Listings:
    """File names of recently seen directories: one listing per directory instead of a stat per candidate
    source (12 for an image). On NFS or Lustre a stat can cost a millisecond, and a GPU wants an image every
    few milliseconds. Held by the caller for one scan; a file added meanwhile is found by the next run."""

    def __init__(self, suffixes: tuple[str, ...], size: int = 8):
        self.suffixes = suffixes  # only names that can be asked for are kept (JSONs, or images)
        self.size = size
        self._cache: dict[str, frozenset[str]] = {}

    def has(self, directory: str, name: str) -> bool:
        names = self._cache.pop(directory, None)
        if names is None:
            try:
                with os.scandir(directory) as it:
                    names = frozenset(e.name for e in it if e.name.endswith(self.suffixes) and e.is_file())
            except OSError:
                names = frozenset()
            if len(self._cache) >= self.size:
                self._cache.pop(next(iter(self._cache)))
        self._cache[directory] = names  # most recently used last
        return name in names


def _exists(directory: str, name: str, listings: Listings | None) -> bool:
    return listings.has(directory, name) if listings else os.path.isfile(os.path.join(directory, name))


def find_image(
    npz_path: str, image_dir: str | None = None, listings: Listings | None = None, also: str | None = None
) -> str | None:
    """``<dir>/<stem>.<ext>``, else ``<dir>/../<stem>.<ext>``, else ``<also>/<stem>.<ext>`` (or only ``image_dir``
    when given)."""
    d = os.path.dirname(npz_path)
    stem = stem_of(os.path.basename(npz_path)) or ""
    places = [image_dir] if image_dir else [d, os.path.dirname(d)] + ([also] if also else [])
    for place in places:
        for ext in IMAGE_EXTS:
            if _exists(place, stem + ext, listings):
                return os.path.join(place, stem + ext)
    return None


def find_json(npz_path: str, json_dir: str | None = None, listings: Listings | None = None) -> str | None:
    """``<json_dir>/<stem>.json`` when a JSON dir is given, else the NPZ dir, then its parent."""
    d = os.path.dirname(npz_path)
    stem = stem_of(os.path.basename(npz_path)) or ""
    for place in [json_dir] if json_dir else [d, os.path.dirname(d)]:
        if _exists(place, stem + ".json", listings):
            return os.path.join(place, stem + ".json")
    return None


def holds_npz(directory: str) -> bool:
    """True as soon as one feature NPZ is seen (stops scanning early)."""
    try:
        with os.scandir(directory) as it:
            return any(stem_of(e.name) is not None and not e.name.startswith(".") for e in it)
    except OSError:
        return False


def npz_names_signature(directory: str) -> tuple[int, str]:
    """(count, digest) of the feature NPZ names in a directory: changes when files are added or removed,
    not when an existing file is rewritten in place."""

    h = hashlib.sha1()
    names = sorted(e.name for e in os.scandir(directory) if stem_of(e.name) is not None and not e.name.startswith("."))
    for n in names:
        h.update(n.encode() + b"\0")
    return len(names), h.hexdigest()[:16]


def first_npz(directory: str, n: int) -> list[str]:
    """Up to ``n`` feature NPZs in directory order, without listing the whole directory (a cheap sample)."""
    out: list[str] = []
    try:
        with os.scandir(directory) as it:
            for e in it:
                if stem_of(e.name) is not None and not e.name.startswith("."):
                    out.append(e.path)
                    if len(out) >= n:
                        break
    except OSError:
        pass
    return out


@dataclass(frozen=True)
class DirSnapshot:
    """What a run saw of its directory when it started: a later mtime is the cheap sign of new names, and the
    name signature the exact one (our own in-place rewrites change neither)."""

    mtime_ns: int
    signature: str  # "<count>:<digest>" of the feature NPZ names


def snapshot(directory: str) -> DirSnapshot:
    mtime = os.stat(directory).st_mtime_ns  # before listing: a file added meanwhile shows as a newer mtime
    n, digest = npz_names_signature(directory)
    return DirSnapshot(mtime, f"{n}:{digest}")


def dataset_dirs(root: str) -> list[str]:
    """Directories under ``root`` holding feature NPZs, relative to ``root`` ("." for the root itself).

    Each is one partition: exactly the NPZ files directly in it (nested directories are partitions of their
    own, never part of their parent's)."""
    return [os.path.relpath(d, root) for d in walk_dirs(root) if holds_npz(d)]

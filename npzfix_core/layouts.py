"""The four layouts the original tools read, as work items (an NPZ and its source image or JSON): edges
(``<npz_dir>`` and a JSON tree), bulk (a root scanned for NPZs), train/test (``<split>/extracted``) and a sample
list (image paths, one per line). Items come one at a time: a run over 100,000 files holds names, not items.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Iterable, Iterator

from npzfix_core.discovery import (
    IMAGE_EXTS,
    SUFFIXES,
    Listings,
    WorkItem,
    find_image,
    find_json,
    iter_npz,
    npz_names,
    scan_npz,
    stem_of,
    walk_dirs,
)

log = logging.getLogger("npzfix")


def _item(npz: str, source: str | None, what: str) -> WorkItem:
    stem = stem_of(os.path.basename(npz)) or os.path.basename(npz)
    return WorkItem(npz, source, stem, None if source else f"no {what} found for {stem}")


class Items:
    """Work items of one directory's NPZs, made one at a time from the sorted names: a run over 100,000
    files holds the names, not 100,000 items."""

    def __init__(self, directory: str, names: list[str], make: Callable[[str], WorkItem]):
        self.directory, self.names, self.make = directory, names, make

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[WorkItem]:
        for name in self.names:
            yield self.make(os.path.join(self.directory, name))


def edge_items(
    npz_dir: str,
    json_dir: str | None = None,
    order: str = "name",
    glob: str | None = None,
    *,
    recursive: bool = False,
    reverse: bool = False,
    only_mtime_after: float | None = None,
) -> Items:
    """Edges: ``<npz_dir>/<stem>_features.npz`` -> ``<json_dir>/<stem>.json``; with ``recursive`` every directory
    under ``npz_dir`` (the original's ``rglob``), names then relative to it. ``order`` name or mtime (oldest
    first), ``reverse``d; ``only_mtime_after`` keeps files modified strictly later (the original's filter)."""
    if order not in ("name", "mtime"):
        raise ValueError(f"unknown order {order!r}")
    if recursive:
        names = [
            os.path.relpath(os.path.join(d, n), npz_dir) if d != npz_dir else n
            for d in walk_dirs(npz_dir)
            for n in npz_names(d, glob)
        ]
    else:
        names = npz_names(npz_dir, glob)
    if order == "mtime" or only_mtime_after is not None:
        mtimes = {}
        for n in names:
            try:
                mtimes[n] = os.stat(os.path.join(npz_dir, n)).st_mtime_ns
            except OSError:
                mtimes[n] = 0  # vanished since the listing: its item reports it
        if only_mtime_after is not None:
            names = [n for n in names if mtimes[n] / 1e9 > only_mtime_after]
        if order == "mtime":
            names.sort(key=lambda n: (mtimes[n], n))
        del mtimes
    elif recursive:
        names.sort()
    if reverse:
        names.reverse()
    listings = Listings((".json",))
    return Items(npz_dir, names, lambda p: _item(p, find_json(p, json_dir, listings), "JSON"))


def bulk_items(root: str, recursive: bool = True) -> Iterator[WorkItem]:
    """Bulk: recursive scan of ``root`` (or its own files only: one Dagster partition is one directory);
    image beside the NPZ, in its parent, or at ``<root>/<stem>.<ext>`` (where the original bulk tool looked)."""
    listings = Listings(IMAGE_EXTS)
    for p in scan_npz(root) if recursive else iter_npz(root):
        yield _item(p, find_image(p, listings=listings, also=root), "image")


def train_test_items(extracted_dirs: Iterable[str]) -> Iterator[WorkItem]:
    """Train/test: ``<split>/extracted/<stem>_features.npz``, image in ``<split>/``."""
    for d in extracted_dirs:
        parent = os.path.dirname(os.path.abspath(d))
        listings = Listings(IMAGE_EXTS)
        for p in iter_npz(d):
            yield _item(p, find_image(p, parent, listings), "image")


def build_index(search_dirs: Iterable[str]) -> dict[str, str]:
    """stem -> NPZ over all search dirs, built once; the first dir listed wins a clash."""
    index: dict[str, str] = {}
    for root in search_dirs:
        for p in scan_npz(root):
            stem = stem_of(os.path.basename(p))
            if stem is not None and stem not in index:
                index[stem] = p
    return index


def sample_items(samples_file: str, search_dirs: list[str]) -> Iterator[WorkItem]:
    """Sample list: one image path per line -> same-dir ``_features``, same-dir ``_sam2_features``, then the index."""
    index: dict[str, str] | None = None
    with open(samples_file, "rb") as f:  # paths are bytes: a name that is not UTF-8 is still a path
        lines = [os.fsdecode(ln.strip()) for ln in f]
    seen: set[str] = set()
    duplicates = 0
    for image in lines:
        if not image or image.startswith("#"):
            continue
        if image in seen:  # listed twice: encoded and written once
            duplicates += 1
            continue
        seen.add(image)
        d, name = os.path.split(image)
        stem = os.path.splitext(name)[0]
        npz = next((os.path.join(d, stem + s) for s in SUFFIXES if os.path.isfile(os.path.join(d, stem + s))), None)
        if npz is None:
            if index is None:
                index = build_index(search_dirs)
            npz = index.get(stem)
        if npz is None:
            yield WorkItem(None, image, stem, f"no NPZ found for {stem}")
        elif not os.path.isfile(image):
            yield WorkItem(npz, None, stem, f"image {image} does not exist")
        else:
            yield WorkItem(npz, image, stem)
    if duplicates:
        log.warning("%s: %d repeated lines ignored (each image is done once)", samples_file, duplicates)

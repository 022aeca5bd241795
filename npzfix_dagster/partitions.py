"""One dynamic partition per dataset directory, keyed by its path relative to the configured root.

Keys must stay distinguishable where the UI cuts them short (chips, health bars, run tags), so the
trailing ``extracted`` shared by every SA-1B shard is left out: ``sa_000020`` is the key of
``sa_000020/extracted``. ``key_of`` and ``sa1b_dir`` are the only mapping, both ways; a key spelled the old
way (``sa_000020/extracted``) still names the same directory, and ``npzfix partitions sync`` migrates it.
"""

from __future__ import annotations

import logging
import os

from dagster import DynamicPartitionsDefinition

log = logging.getLogger("npzfix")

# Every directory holding *_features.npz under NPZFIX_SA1B_ROOT, e.g. "sa_000020" for sa_000020/extracted.
sa1b_dirs = DynamicPartitionsDefinition(name="sa1b_dirs")
# Every split under NPZFIX_TRAIN_TEST_ROOT with <split>/extracted, e.g. "train_1200", "test".
train_test_splits = DynamicPartitionsDefinition(name="train_test_splits")


class PartitionKeyError(ValueError):
    """A key that does not name a directory inside its root (added by hand in the UI or through the API)."""


def key_dir(root: str, key: str) -> str:
    """The directory a key names under ``root``, checked lexically: relative, normalised, no ``..``.

    A key becomes a path only through here, so no key can make a run write outside its root. Symlinks placed
    inside the root are followed, as discovery follows them.
    """
    if not key or "\0" in key:
        raise PartitionKeyError(f"partition key {key!r} is empty or holds a NUL byte")
    if os.path.isabs(key) or key.startswith("~"):
        raise PartitionKeyError(f"partition key {key!r} is absolute: keys are paths relative to {root}")
    if ".." in key.split("/"):
        raise PartitionKeyError(f"partition key {key!r} leaves its root {root} ('..')")
    if key != os.path.normpath(key):
        raise PartitionKeyError(f"partition key {key!r} is not normalised: use {os.path.normpath(key)!r}")
    return os.path.join(root, key) if key != "." else root


LEAF = "extracted"


def sa1b_dir(root: str, key: str) -> str:
    """``<key>/extracted`` where that directory exists, else ``<key>`` itself."""
    d = key_dir(root, key)
    return os.path.join(d, LEAF) if os.path.isdir(os.path.join(d, LEAF)) else d


def split_extracted_dir(root: str, key: str) -> str:
    if "/" in key:
        raise PartitionKeyError(f"train/test partition key {key!r} must be one split name (no '/')")
    return os.path.join(key_dir(root, key), "extracted")


def key_of(rel_dir: str, partitions_def_name: str) -> str | None:
    """The partition key of a directory holding NPZs (relative to its root), the inverse of ``sa1b_dir`` /
    ``split_extracted_dir``; None when the directory is not a partition of that kind. The one place where
    directories become keys (sync, sensors)."""
    rel = os.path.normpath(rel_dir)
    parent, leaf = os.path.split(rel)
    if partitions_def_name == sa1b_dirs.name:
        return parent if leaf == LEAF and parent not in ("", ".") else rel
    return parent if leaf == LEAF and parent not in ("", ".") and "/" not in parent else None


def keys_for(rel_dirs: list[str], partitions_def_name: str) -> dict[str, str]:
    """rel dir -> key for every directory that is a partition. Where a directory holds NPZ files beside an
    ``extracted`` directory that does too, the key names ``extracted`` (as ``sa1b_dir`` resolves it) and the
    outer directory's own files are left out, with a warning: one key, one directory."""
    out: dict[str, str] = {}
    taken: dict[str, str] = {}
    for rel in sorted(rel_dirs, key=lambda r: (not r.endswith(LEAF), r)):  # extracted/ first
        key = key_of(rel, partitions_def_name)
        if key is None:
            continue
        if key in taken:
            log.warning(
                "%s holds NPZ files beside %s: its own files are not a partition (key %r names the latter)",
                rel,
                taken[key],
                key,
            )
            continue
        taken[key] = rel
        out[rel] = key
    return out


def discover(sa1b_root: str | None, train_test_root: str | None) -> dict[str, list[str]]:
    """Partition keys found on disk now, per partitions definition name."""
    from npzfix_core import discovery

    out: dict[str, list[str]] = {}
    for name, root in ((sa1b_dirs.name, sa1b_root), (train_test_splits.name, train_test_root)):
        rels = discovery.dataset_dirs(root) if root and os.path.isdir(root) else []
        out[name] = sorted(keys_for(rels, name).values())
    return out


def sync(instance, sa1b_root: str | None, train_test_root: str | None) -> dict[str, list[str]]:
    """Add partitions for directories on disk that the instance does not know yet, and retire keys spelled
    the old way (``<shard>/extracted``) whose directory now has its short key; returns what was added."""
    added = {}
    for name, keys in discover(sa1b_root, train_test_root).items():
        known = set(instance.get_dynamic_partitions(name))
        new = [k for k in keys if k not in known]
        if new:
            instance.add_dynamic_partitions(name, new)
        added[name] = new
        if name == sa1b_dirs.name:
            current = set(keys)
            for old in sorted(known):
                if old.endswith("/" + LEAF) and old not in current and key_of(old, name) in current:
                    instance.delete_dynamic_partition(name, old)
                    added.setdefault("migrated", []).append(f"{old} -> {key_of(old, name)}")
    return added

"""One dynamic partition per dataset directory, keyed by its path relative to the configured root."""

from __future__ import annotations

import os

from dagster import DynamicPartitionsDefinition

# Every directory holding *_features.npz under NPZFIX_SA1B_ROOT, e.g. "sa_000020/extracted".
sa1b_dirs = DynamicPartitionsDefinition(name="sa1b_dirs")
# Every split under NPZFIX_TRAIN_TEST_ROOT with <split>/extracted, e.g. "train_1200", "test".
train_test_splits = DynamicPartitionsDefinition(name="train_test_splits")


def sa1b_dir(root: str, key: str) -> str:
    return os.path.normpath(os.path.join(root, key))


def split_extracted_dir(root: str, key: str) -> str:
    return os.path.join(root, key, "extracted")


def discover(sa1b_root: str | None, train_test_root: str | None) -> dict[str, list[str]]:
    """Partition keys found on disk now, per partitions definition name."""
    from npzfix_core import discovery

    return {
        sa1b_dirs.name: discovery.dataset_dirs(sa1b_root) if sa1b_root and os.path.isdir(sa1b_root) else [],
        train_test_splits.name: discovery.split_dirs(train_test_root)
        if train_test_root and os.path.isdir(train_test_root)
        else [],
    }


def sync(instance, sa1b_root: str | None, train_test_root: str | None) -> dict[str, list[str]]:
    """Add partitions for directories on disk that the instance does not know yet; returns what was added."""
    added = {}
    for name, keys in discover(sa1b_root, train_test_root).items():
        known = set(instance.get_dynamic_partitions(name))
        new = [k for k in keys if k not in known]
        if new:
            instance.add_dynamic_partitions(name, new)
        added[name] = new
    return added

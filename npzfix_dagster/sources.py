"""What the three caches are made from, as Dagster sees it: the NPZ files of each dataset directory.

They are external assets (nothing here writes them), observed by the sensors: each observation's data
version is the directory's NPZ-name signature (count and digest of the names, never a read of file
contents), so a directory that received new files shows its fixed assets as "upstream data changed".
A tick observes only the directories whose signature moved: O(changed directories), not O(files).
"""

from dagster import AssetObservation, AssetSpec

from npzfix_dagster.contracts import SA1B_NPZ_FILES, TRAIN_TEST_NPZ_FILES
from npzfix_dagster.partitions import sa1b_dirs, train_test_splits

DATA_VERSION_TAG = "dagster/data_version"  # the tag Dagster reads an observation's data version from

sa1b_npz_files = AssetSpec(
    SA1B_NPZ_FILES,
    partitions_def=sa1b_dirs,
    group_name="sa1b",
    kinds={"numpy"},
    description="The *_features.npz files of one SA-1B directory as found on disk (names, not contents), "
    "with the JPEGs and SA-1B JSONs they are computed from in the shard directory.",
)
train_test_npz_files = AssetSpec(
    TRAIN_TEST_NPZ_FILES,
    partitions_def=train_test_splits,
    group_name="train_test",
    kinds={"numpy"},
    description="The *_features.npz files of <split>/extracted as found on disk, with the images in <split>/.",
)
SOURCE_OF = {sa1b_dirs.name: sa1b_npz_files.key, train_test_splits.name: train_test_npz_files.key}


def observation(partitions_def_name: str, key: str, signature: str) -> AssetObservation:
    return AssetObservation(
        SOURCE_OF[partitions_def_name],
        partition=key,
        tags={DATA_VERSION_TAG: signature},
        metadata={"npz_files": int(signature.split(":", 1)[0])},
    )

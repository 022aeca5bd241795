"""Partition keys: confined to their root, short, and old spellings migrated."""

import os

import pytest
from tests.support import sha
from dagster import instance_for_test, materialize
from tests.support.dagster_support import md_of, resources, shard

from npzfix_core import store
from npzfix_dagster.assets import edges_B_v1, sa1b_features_fixed


def test_partition_keys_are_confined_to_their_root(tmp_path, instance):
    from npzfix_dagster.partitions import PartitionKeyError, key_dir, split_extracted_dir

    root = str(tmp_path / "sa1b")
    outside = shard(str(tmp_path), "elsewhere", n=2, states=("fresh", "fresh"))
    inside = shard(root, "sa 0001 ünï", n=1, states=("fresh",))  # spaces and unicode are legitimate
    os.makedirs(root, exist_ok=True)
    digests = {p: sha(p) for p in outside.npz}
    bad = [
        "../elsewhere/extracted",
        os.path.join(str(tmp_path), "elsewhere", "extracted"),
        "x/../../elsewhere/extracted",
    ]
    instance.add_dynamic_partitions("sa1b_dirs", [*bad, "sa 0001 ünï/extracted"])
    for key in bad:
        for asset in (edges_B_v1, sa1b_features_fixed):
            result = materialize(
                [asset],
                partition_key=key,
                instance=instance,
                resources=resources(tmp_path, sa1b=root),
                raise_on_error=False,
            )
            assert not result.success
            failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0]
            assert "refusing partition" in str(failure.event_specific_data.error) and "no file was touched" in str(
                failure.event_specific_data.error
            )
    assert {p: sha(p) for p in outside.npz} == digests
    result = materialize(
        [edges_B_v1],
        partition_key="sa 0001 ünï/extracted",
        instance=instance,
        resources=resources(tmp_path, sa1b=root),
    )
    assert md_of(result, "edges_B_v1")["updated"].value == 1
    assert int(store.read_arrays(inside.npz[0], ["edge_flag"])["edge_flag"]) == 1
    for key in ("", "a/../b", "a/./b", "a/", "/abs", "~user/x", "a\0b"):
        with pytest.raises(PartitionKeyError):
            key_dir(root, key)
    with pytest.raises(PartitionKeyError):
        split_extracted_dir(root, "train/x")
    assert key_dir(root, "sa_1/extracted") == os.path.join(root, "sa_1/extracted")


def test_short_keys_name_their_extracted_directory_and_old_keys_are_migrated(tmp_path):
    from npzfix_dagster.partitions import key_of, sa1b_dir, sync

    root = str(tmp_path / "sa1b")
    shard(root, "sa_000070", n=1, states=("fresh",))
    shard(root, "sa_000071", n=1, states=("fresh",))
    ext = os.path.join(root, "sa_000070", "extracted")
    assert sa1b_dir(root, "sa_000070") == ext == sa1b_dir(root, "sa_000070/extracted")  # old spelling still works
    assert key_of("sa_000070/extracted", "sa1b_dirs") == "sa_000070" and key_of("extracted", "sa1b_dirs") == "extracted"
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("sa1b_dirs", ["sa_000070/extracted"])
        added = sync(instance, root, None)
        assert added["sa1b_dirs"] == ["sa_000070", "sa_000071"]
        assert added["migrated"] == ["sa_000070/extracted -> sa_000070"]
        assert instance.get_dynamic_partitions("sa1b_dirs") == ["sa_000070", "sa_000071"]

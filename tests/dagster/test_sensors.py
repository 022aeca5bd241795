"""The new-directories sensors: partitions added, runs requested once, ticks O(changed directories)."""

import os

import numpy as np
from dagster import Definitions, build_sensor_context
from tests.support.dagster_support import TEACHER, shard

from npzfix_core import store
from npzfix_dagster.execution import Execution
from npzfix_dagster.assets import edges_B_v1, sa1b_features_fixed
from npzfix_dagster.jobs import sa1b_job
from npzfix_dagster.resources import DatasetRoots, FeaturePipeline
from npzfix_dagster import env
from npzfix_dagster.sensors import sa1b_new_dirs_sensor


def _sensor_defs(root):
    return Definitions(
        assets=[sa1b_features_fixed, edges_B_v1],
        jobs=[sa1b_job],
        sensors=[sa1b_new_dirs_sensor],
        resources={
            "roots": DatasetRoots(sa1b_root=root),
            "teacher": TEACHER,
            "pipeline": FeaturePipeline(),
            "execution": Execution(),
        },
    )


def test_sensor_adds_partitions_and_requests_runs_once(tmp_path, instance):
    root = str(tmp_path / "sa1b")
    shard(root, "sa_000010", n=2)
    defs = _sensor_defs(root)

    def tick(cursor):
        ctx = build_sensor_context(
            instance=instance, cursor=cursor, definitions=defs, resources={"roots": DatasetRoots(sa1b_root=root)}
        )
        return sa1b_new_dirs_sensor(ctx)

    r1 = tick(None)
    assert [rr.partition_key for rr in r1.run_requests] == ["sa_000010"]
    assert r1.dynamic_partitions_requests[0].partition_keys == ["sa_000010"]
    instance.add_dynamic_partitions("sa1b_dirs", ["sa_000010"])
    r2 = tick(r1.cursor)
    assert r2.run_requests == [] and r2.dynamic_partitions_requests == []
    # our own in-place rewrite changes the directory mtime but not its set of files: nothing to do
    p = os.path.join(root, "sa_000010", "extracted", os.listdir(os.path.join(root, "sa_000010", "extracted"))[0])
    store.update(p, {"x": np.zeros(1)})
    r3 = tick(r2.cursor)
    assert r3.run_requests == []
    # new files in a known directory, and a brand-new shard
    shard(root, "sa_000010", n=3, seed=5)
    shard(root, "sa_000011", n=1, seed=6)
    r4 = tick(r3.cursor)
    assert sorted(rr.partition_key for rr in r4.run_requests) == ["sa_000010", "sa_000011"]
    assert r4.dynamic_partitions_requests[0].partition_keys == ["sa_000011"]
    assert tick(r4.cursor).run_requests == []


def test_sensor_tick_on_an_unchanged_tree_lists_no_directory(tmp_path, instance, monkeypatch):
    """A tick's cost follows new work: with nothing new, directories are stat'ed, never listed."""
    from npzfix_core import discovery

    root = tmp_path / "sa1b"
    for i in range(30):
        d = root / f"sa_{i:06d}" / "extracted"
        d.mkdir(parents=True)
        for j in range(5):
            np.savez(d / f"s{i}_{j}_features.npz", x=np.zeros(1))
    defs = _sensor_defs(str(root))
    listings = []
    for name in ("subdirs", "holds_npz", "npz_names_signature"):
        real = getattr(discovery, name)
        monkeypatch.setattr(discovery, name, lambda d, _real=real, _n=name: listings.append((_n, d)) or _real(d))

    def tick(cursor):
        ctx = build_sensor_context(
            instance=instance, cursor=cursor, definitions=defs, resources={"roots": DatasetRoots(sa1b_root=str(root))}
        )
        return sa1b_new_dirs_sensor(ctx)

    first = tick(None)
    assert len(first.run_requests) == 30 and listings
    listings.clear()
    second = tick(first.cursor)
    assert second.run_requests == [] and listings == []
    np.savez(root / "sa_000007" / "extracted" / "new_features.npz", x=np.zeros(1))
    third = tick(second.cursor)
    assert [r.partition_key for r in third.run_requests] == ["sa_000007"]
    assert {d for _, d in listings} == {str(root / "sa_000007" / "extracted")}


def test_sensor_backlog_drains_without_relisting_and_split_sensor_keys(tmp_path, instance, monkeypatch):
    from npzfix_core import discovery
    from npzfix_dagster import sensors

    root = tmp_path / "sa1b"
    for i in range(25):
        d = root / f"sa_{i:06d}" / "extracted"
        d.mkdir(parents=True)
        np.savez(d / f"s{i}_features.npz", x=np.zeros(1))
    monkeypatch.setattr(sensors, "MAX_RUNS_PER_TICK", 10)
    defs = _sensor_defs(str(root))
    listed = []
    real = discovery.subdirs
    monkeypatch.setattr(discovery, "subdirs", lambda d: listed.append(d) or real(d))
    cursor, sizes = None, []
    for _ in range(4):
        listed.clear()
        ctx = build_sensor_context(
            instance=instance, cursor=cursor, definitions=defs, resources={"roots": DatasetRoots(sa1b_root=str(root))}
        )
        r = sensors.sa1b_new_dirs_sensor(ctx)
        sizes.append((len(r.run_requests), len(listed)))
        cursor = r.cursor
    assert [n for n, _ in sizes] == [10, 10, 5, 0]
    assert all(n_listed == 0 for _, n_listed in sizes[1:])  # the backlog is served from the cursor

    tt = tmp_path / "tt"
    for split in ("train_1200", "test"):
        d = tt / split / "extracted"
        d.mkdir(parents=True)
        np.savez(d / f"{split}_0_features.npz", x=np.zeros(1))
    (tt / "notes").mkdir()
    from npzfix_dagster.sensors import train_test_new_splits_sensor

    ctx = build_sensor_context(instance=instance, resources={"roots": DatasetRoots(train_test_root=str(tt))})
    r = train_test_new_splits_sensor(ctx)
    assert sorted(rr.partition_key for rr in r.run_requests) == ["test", "train_1200"]
    assert sorted(r.dynamic_partitions_requests[0].partition_keys) == ["test", "train_1200"]


def test_a_first_listing_beyond_the_tick_budget_is_finished_by_later_ticks(tmp_path, instance, monkeypatch):
    """A fresh SA-1B root may not be listed within one tick: what is left waits in the cursor, nothing is lost."""
    root = str(tmp_path / "sa1b")
    for i in range(3):
        shard(root, f"sa_00009{i}", n=1, states=("fresh",), seed=i)
    defs = _sensor_defs(root)
    monkeypatch.setenv(env.LIST_BUDGET_ENV, "1e-9")  # spent at once: only what is already known is walked
    with build_sensor_context(
        instance=instance, definitions=defs, resources={"roots": DatasetRoots(sa1b_root=root)}
    ) as ctx:
        first = sa1b_new_dirs_sensor(ctx)
    assert not first.run_requests and "listing budget spent" in first.skip_reason.skip_message
    monkeypatch.setenv(env.LIST_BUDGET_ENV, "30")
    with build_sensor_context(
        instance=instance, definitions=defs, cursor=first.cursor, resources={"roots": DatasetRoots(sa1b_root=root)}
    ) as ctx:
        second = sa1b_new_dirs_sensor(ctx)
    assert sorted(r.partition_key for r in second.run_requests) == ["sa_000090", "sa_000091", "sa_000092"]

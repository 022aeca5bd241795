"""The daily re-check: decides from the instance, one stat and a sample, by the runners' done rule."""

import os
import shutil

import numpy as np
from dagster import build_schedule_context, instance_for_test, materialize
from tests.support.dagster_support import RES, TEACHER, resources, shard

from npzfix_core import store
from npzfix_dagster.assets import edges_B_v1, sa1b_features_fixed
from npzfix_dagster.resources import DatasetRoots, Sam2Teacher
from npzfix_dagster.schedules import sa1b_daily_recheck


def test_schedule_decides_from_the_instance_and_a_sample(tmp_path):
    """The daily re-check reads latest materializations, one stat per directory and two flags, never all files."""
    with instance_for_test() as instance:
        _schedule_case(tmp_path, instance)


def _schedule_case(tmp_path, instance):
    root = str(tmp_path / "sa1b")
    a = shard(root, "sa_000020", n=2, states=("fresh", "fresh"))
    c = shard(root, "sa_000022", n=2, states=("fresh", "fresh"), seed=2)
    shard(root, "sa_000021", n=1, states=("fresh",))
    keys = ["sa_000020/extracted", "sa_000021/extracted", "sa_000022/extracted", "sa_000023/extracted", "../sa1b"]
    instance.add_dynamic_partitions("sa1b_dirs", keys)
    r = resources(tmp_path, sa1b=root)
    for key in ("sa_000020/extracted", "sa_000022/extracted"):
        assert materialize([sa1b_features_fixed, edges_B_v1], partition_key=key, instance=instance, resources=r).success

    def tick(teacher=TEACHER):
        roots = DatasetRoots(sa1b_root=root)
        with build_schedule_context(instance=instance, resources={"roots": roots, "teacher": teacher}) as ctx:
            result = sa1b_daily_recheck(ctx)
        if not isinstance(result, list):
            return result.skip_message
        return {q.partition_key: q.tags["npzfix/reason"] for q in result}

    from npzfix_core import discovery

    listed = []
    real = discovery.npz_names_signature
    discovery.npz_names_signature = lambda d: listed.append(d) or real(d)
    try:
        assert tick() == {"sa_000021/extracted": "edges_B_v1 never materialized"}
    finally:
        discovery.npz_names_signature = real
    assert listed == []  # done partitions cost a stat and two flag reads: no listing
    new = os.path.join(os.path.dirname(c.npz[0]), "sa_new_features.npz")
    shutil.copy(c.npz[0], new)  # a file that lands after the run
    store.update(a.npz[1], remove={"edge_flag"})  # a flag removed behind Dagster's back (and a rewrite: new mtime)
    assert tick() == {
        "sa_000020/extracted": "a sampled file is not done (unflagged, or written by another teacher or kernel)",
        "sa_000021/extracted": "edges_B_v1 never materialized",
        "sa_000022/extracted": "edges_B_v1: NPZ files added or removed since the last run",
    }
    os.remove(new)
    store.update(a.npz[1], {"edge_flag": np.array(1, np.uint8)})
    other = Sam2Teacher(random_init_seed=1, resolution=RES, device="cpu")
    assert tick(other) == {
        "sa_000020/extracted": "sa1b_features_fixed: teacher changed since the last run",
        "sa_000021/extracted": "edges_B_v1 never materialized",
        "sa_000022/extracted": "sa1b_features_fixed: teacher changed since the last run",
    }
    for key in ("sa_000021/extracted",):
        materialize([sa1b_features_fixed, edges_B_v1], partition_key=key, instance=instance, resources=r)
    skip = tick()
    assert skip.startswith("5 partitions checked, every one done; 1 directories gone; 1 keys refused")
    # a new edge kernel: the UI shows every edges partition stale ("code version changed"); the schedule agrees
    os.environ["NPZFIX_EDGE_KERNEL"] = "5"
    try:
        change = "edges_B_v1: edge rule or kernel changed since the last run ("
        change += "method_b B_v1 kernel 3 -> method_b B_v1 kernel 5)"
        assert tick() == {k: change for k in ("sa_000020/extracted", "sa_000021/extracted", "sa_000022/extracted")}
    finally:
        del os.environ["NPZFIX_EDGE_KERNEL"]
    # files rewritten behind Dagster's back with another kernel: the sample says so, by the runners' own rule
    from npzfix_core.edge_repair import EdgeRequest, run_edges

    run_edges(EdgeRequest(npz_dir=os.path.dirname(a.npz[0]), kernel_size=5), progress=False)
    assert tick() == {
        "sa_000020/extracted": "a sampled file is not done (unflagged, or written by another teacher or kernel)"
    }

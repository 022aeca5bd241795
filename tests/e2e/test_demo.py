"""`make demo`'s dataset and its three phases, asserted on the checks and shard rebuilds they end with."""

import json
import os

from tests.support import raw_members
from dagster import AssetKey, instance_for_test, materialize
from tests.support.dagster_support import RES, TEACHER

from npzfix_core import store
from npzfix_dagster.execution import Execution
from npzfix_dagster.assets import edges_B_v1, sa1b_features_fixed, train_test_features_fixed
from npzfix_dagster.resources import DatasetRoots, FeaturePipeline


def test_the_demo_ends_with_red_checks_only_for_its_corrupt_file(tmp_path):
    """Phase 1 (defaults): the legacy noise file of sa_000000 is caught by value, the corrupt file of sa_000001
    is red. Phase 2 (legacy: verify): the noise is redone, sa_000002's right legacy files are adopted with their
    bytes kept, and the corrupt file is the only red, named."""
    from npzfix_tools import demo
    from npzfix_dagster.partitions import sync

    sa1b, tt = demo.generate(str(tmp_path / "data"), RES)
    ext = os.path.join(sa1b, "sa_000001", "extracted")

    def unreadable(name):
        try:
            store.inspect(os.path.join(ext, name))
            return False
        except store.NpzError:
            return True

    (bad,) = [n for n in os.listdir(ext) if unreadable(n)]
    legacy0 = [p for p in _npzs(sa1b, "sa_000000") if _legacy(p)]
    legacy2 = _npzs(sa1b, "sa_000002")
    assert len(legacy0) == 1 and all(_legacy(p) for p in legacy2)
    before = {p: {k: v for k, v in raw_members(p).items() if k.startswith(("P4", "P5"))} for p in legacy2}
    roots = DatasetRoots(sa1b_root=sa1b, train_test_root=tt, preview_dir=str(tmp_path / "p"))
    r = {"roots": roots, "teacher": TEACHER, "pipeline": FeaturePipeline(), "execution": Execution()}
    phase1, phase2 = [], []
    with instance_for_test() as instance:
        sync(instance, sa1b, tt)
        assert demo.observe(instance, sa1b, tt) == 5  # the source assets read filled in the UI
        for source, n in (("sa1b_npz_files", 3), ("train_test_npz_files", 2)):
            from dagster import AssetKey

            records = instance.fetch_observations(AssetKey(source), limit=100).records
            assert len({r.partition_key for r in records}) == n, source
        shards = instance.get_dynamic_partitions("sa1b_dirs")
        for assets, pdef in (
            ([sa1b_features_fixed, edges_B_v1], "sa1b_dirs"),
            ([train_test_features_fixed], "train_test_splits"),
        ):
            for key in instance.get_dynamic_partitions(pdef):
                res = materialize(assets, partition_key=key, instance=instance, resources=r, raise_on_error=False)
                phase1 += demo.check_results(instance, res.run_id)
        verify = {"ops": {"sa1b_features_fixed": {"config": {"legacy": "verify"}}}}
        for key in shards:
            res = materialize(
                [sa1b_features_fixed],
                partition_key=key,
                instance=instance,
                resources=r,
                run_config=verify,
                raise_on_error=False,
            )
            phase2 += demo.check_results(instance, res.run_id)
        # phase 3: shards from the repaired caches, then one file repaired again: only its shard is rebuilt
        from dagster import PipesSubprocessClient

        from npzfix_core import edge_repair
        from npzfix_core.requests import EdgeRequest
        from npzfix_dagster.shards import sa1b_training_shards

        roots3 = DatasetRoots(sa1b_root=sa1b, preview_dir=str(tmp_path / "p"), shards_root=str(tmp_path / "shards"))
        r3 = {"roots": roots3, "pipes_subprocess_client": PipesSubprocessClient()}
        small = {"ops": {"sa1b_training_shards": {"config": {"shard_size": 2}}}}

        def shards_run(key):
            res = materialize(
                [sa1b_training_shards], partition_key=key, instance=instance, resources=r3, run_config=small
            )
            return res.asset_materializations_for_node("sa1b_training_shards")[0].metadata

        assert [shards_run(k)["shards_new"].value for k in shards] == [3, 3, 3]
        ext0 = os.path.join(sa1b, "sa_000000", "extracted")
        one = sorted(os.listdir(ext0))[2]  # the second shard's first member
        edge_repair.run_edges(EdgeRequest(ext0, glob=one, skip_if_processed=False), progress=False)
        md = shards_run("sa_000000")
        assert md["shards_rebuilt"].value == 1 and md["shards_kept"].value == 2
        assert "sa1b_shard_00001" in md["rebuilt"].value
    corrupt = [
        f"{a}.{c} [sa_000001]: FAILED ({bad})"
        for a in ("edges_B_v1", "sa1b_features_fixed")
        for c in ("no_failed_files", "sample_valid")
    ]
    noise = f"sa1b_features_fixed.sample_valid [sa_000000]: FAILED ({os.path.basename(legacy0[0])})"
    assert sorted(g for g in phase1 if "FAILED" in g) == sorted([*corrupt, noise]), phase1
    assert len(phase1) == 2 * 2 * 3 + 2 * 2  # two checks of two assets on three shards, two checks on two splits
    assert sorted(g for g in phase2 if "FAILED" in g) == [c for c in corrupt if c.startswith("sa1b_")], phase2
    assert len(phase2) == 2 * 3
    assert not _legacy(legacy0[0]) and all(not _legacy(p) for p in legacy2)
    for p in legacy2:  # adopted, not rewritten
        assert {k: v for k, v in raw_members(p).items() if k in before[p]} == before[p]
        prov = json.loads(str(store.read_flags(p, ["feature_provenance"])["feature_provenance"]))
        assert prov["adopted"]["verified"] == 4 and prov["adopted"]["of"] == 6


def _npzs(root, shard):
    ext = os.path.join(root, shard, "extracted")
    return sorted(os.path.join(ext, n) for n in os.listdir(ext))


def _legacy(npz):
    flags = store.read_flags(npz, ["feature_flag", "feature_provenance"])
    return "feature_flag" in flags and int(flags["feature_flag"]) == 1 and "feature_provenance" not in flags

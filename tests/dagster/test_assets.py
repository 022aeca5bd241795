"""The three assets on a real (temporary) Dagster instance: metadata, counts, partitions, lineage and staleness."""

import json
import os
import shutil

import numpy as np
from tests.support import sha
from dagster import AssetKey, Definitions, build_sensor_context, instance_for_test, materialize
from tests.support.dagster_support import RES, TEACHER, check_results, md_of, partition, resources, shard

from npzfix_core import store
from npzfix_core.edges import method_b_reference, parse_sa1b
from npzfix_dagster.execution import Execution
from npzfix_dagster.assets import edges_B_v1, sa1b_features_fixed, train_test_features_fixed
from npzfix_dagster.jobs import sample_list_job
from npzfix_dagster.resources import FeaturePipeline, Sam2Teacher
from npzfix_dagster.sensors import sa1b_new_dirs_sensor


def test_edges_asset_materializes_partition_with_metadata_and_checks(tmp_path, instance):
    root = str(tmp_path / "sa1b")
    res = shard(root, "sa_000001", states=("fresh", "with_256", "corrupt", "stale"))
    instance.add_dynamic_partitions("sa1b_dirs", ["sa_000001/extracted"])
    result = materialize(
        [edges_B_v1], partition_key="sa_000001/extracted", instance=instance, resources=resources(tmp_path, sa1b=root)
    )
    assert result.success  # failures are recorded, not raised
    md = md_of(result, "edges_B_v1")
    assert md["seen"].value == 4 and md["updated"].value == 3 and md["failed"].value == 1
    assert "not a readable NPZ" in md["failures"].value
    assert md["provenance"].value["kernel_size"] == 3
    assert os.path.exists(md["preview"].value) and os.path.exists(md["report"].value)
    checks = check_results(result)
    assert checks == {"no_failed_files": False, "sample_valid": False}
    for p, s in res.states.items():
        if s == "corrupt":
            continue
        stem = os.path.basename(p).replace("_features.npz", "")
        want = method_b_reference(parse_sa1b(json.load(open(os.path.join(res.root, stem + ".json")))), 3)
        np.testing.assert_array_equal(store.read_arrays(p, ["edge_64x64"])["edge_64x64"], want[64])


def test_feature_assets_and_vanished_directory(tmp_path, instance):
    sa1b, tt = str(tmp_path / "sa1b"), str(tmp_path / "tt")
    a = shard(sa1b, "sa_000003", n=2, states=("fresh", "feature_flagged"))
    shard(tt, "train_1200", n=2, states=("fresh", "fresh"))
    instance.add_dynamic_partitions("sa1b_dirs", ["sa_000003/extracted", "gone/extracted"])
    instance.add_dynamic_partitions("train_test_splits", ["train_1200"])
    r = resources(tmp_path, sa1b=sa1b, tt=tt)
    result = materialize([sa1b_features_fixed], partition_key="sa_000003/extracted", instance=instance, resources=r)
    md = md_of(result, "sa1b_features_fixed")
    assert md["updated"].value == 1 and md["skipped_legacy"].value == 1
    assert md["provenance"].value["weights"] == "random-init:0"
    got = store.read_arrays(a.npz[0])
    assert got["P4_S16"].shape == (1, 256, 16, 16) and got["feature_flag"] == 1
    result = materialize([train_test_features_fixed], partition_key="train_1200", instance=instance, resources=r)
    assert md_of(result, "train_test_features_fixed")["updated"].value == 2
    assert check_results(result) == {"no_failed_files": True, "sample_valid": True}
    result = materialize(
        [edges_B_v1], partition_key="gone/extracted", instance=instance, resources=r, raise_on_error=False
    )
    assert not result.success
    failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0]
    assert "does not exist" in str(failure.event_specific_data.error)


def test_sample_list_job(tmp_path, instance):
    res = shard(str(tmp_path), "s", n=3, states=("fresh",) * 3)
    images = [os.path.join(res.root, os.path.basename(p).replace("_features.npz", ".jpg")) for p in res.npz]
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(images))
    resources = {"teacher": TEACHER, "pipeline": FeaturePipeline(), "execution": Execution()}
    defs = Definitions(jobs=[sample_list_job], resources=resources)
    result = defs.get_job_def("sample_list_job").execute_in_process(
        instance=instance,
        run_config={
            "ops": {"fix_from_sample_list": {"config": {"samples": str(lst), "npz_dirs": [res.root], "max_images": 2}}}
        },
    )
    assert result.success
    mats = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    assert mats[0].event_specific_data.metadata["updated"].value == 2  # metadata, no pickled value
    flagged = [("feature_flag" in store.inspect(p), "feature_provenance" in store.inspect(p)) for p in res.npz]
    assert flagged == [(False, True), (False, True), (False, False)]


def test_a_run_with_nothing_to_do_is_cheap_and_the_event_log_stays_short(tmp_path):
    """Done files need no source (the JPEGs may be gone); a run in which every file fails logs tens of events."""
    logs = {"python_logs": {"managed_python_loggers": ["npzfix"], "python_log_level": "INFO"}}  # as deploy/dagster.yaml
    with instance_for_test(overrides=logs) as instance:
        _cheap_run_case(tmp_path, instance)


def _cheap_run_case(tmp_path, instance):
    root, res, key, r = partition(tmp_path, instance, "sa_000030", n=3, states=("fresh",) * 3)
    assert (
        md_of(
            materialize([sa1b_features_fixed], partition_key=key, instance=instance, resources=r), "sa1b_features_fixed"
        )["updated"].value
        == 3
    )
    for name in os.listdir(res.root):
        if name.endswith(".jpg"):
            os.remove(os.path.join(res.root, name))
    md = md_of(
        materialize([sa1b_features_fixed], partition_key=key, instance=instance, resources=r), "sa1b_features_fixed"
    )
    assert md["skipped_done"].value == 3 and md["missing_source"].value == 0

    ext = os.path.dirname(res.npz[0])
    for i in range(150):
        with open(os.path.join(ext, f"junk{i:03d}_features.npz"), "wb") as f:
            f.write(b"not a zip")
    result = materialize([edges_B_v1], partition_key=key, instance=instance, resources=r)
    assert md_of(result, "edges_B_v1")["failed"].value == 150
    logs = instance.all_logs(result.run_id)
    per_file = [e for e in logs if "not a readable NPZ" in (e.user_message or "") and "junk" in e.user_message]
    assert len(per_file) <= 25  # the first 20, then a count (the failures table and report hold all 150)
    assert any("130 more failed files" in (e.user_message or "") for e in logs)
    assert len(logs) < 100


def test_a_partition_is_the_files_directly_in_its_directory(tmp_path, instance):
    """Nested NPZ directories are partitions of their own: no asset of the outer one touches them."""
    from npzfix_dagster.partitions import discover, key_of

    root = str(tmp_path / "sa1b")
    outer = shard(root, "sa_000050", n=2, states=("fresh", "fresh"))
    inner = shard(os.path.join(root, "sa_000050", "extracted"), "more", n=1, states=("fresh",))
    keys = discover(root, None)["sa1b_dirs"]
    assert keys == ["sa_000050", "sa_000050/extracted/more"]  # short keys: the shared 'extracted' left out
    assert key_of("train_1200/extracted", "train_test_splits") == "train_1200"
    assert key_of("train_1200", "train_test_splits") is None and key_of("a/b/extracted", "train_test_splits") is None
    instance.add_dynamic_partitions("sa1b_dirs", keys)
    before = sha(inner.npz[0])
    r = resources(tmp_path, sa1b=root)
    for asset in (sa1b_features_fixed, edges_B_v1):
        md = md_of(materialize([asset], partition_key=keys[0], instance=instance, resources=r), asset.key.path[-1])
        assert md["seen"].value == 2
    assert sha(inner.npz[0]) == before and all(int(store.read_flags(p, ["edge_flag"])["edge_flag"]) for p in outer.npz)


def test_lineage_and_staleness_the_dagster_way(tmp_path):
    """The UI's stale badge, through Dagster's own resolver: new NPZ files upstream ("upstream data") and a
    changed teacher ("code version") each make the partition stale; our own rewrites do not."""
    from dagster import AssetsDefinition
    from dagster._core.definitions.data_version import StaleStatus
    from dagster._utils.test.data_versions import get_stale_status_resolver

    from npzfix_dagster.assets import versioned
    from npzfix_dagster.sources import sa1b_npz_files

    root = str(tmp_path / "sa1b")
    res = shard(root, "sa_000080", n=2, states=("fresh", "fresh"))
    key = "sa_000080"
    r = resources(tmp_path, sa1b=root)
    assets = [sa1b_npz_files, *versioned(TEACHER, 3)]
    fixed = [a for a in assets[1:] if a.key.path[-1] != "train_test_features_fixed"]
    with instance_for_test() as instance:
        cursor = None

        def tick():  # what the daemon does with a sensor result: partitions, observations
            nonlocal cursor
            with build_sensor_context(instance=instance, cursor=cursor, resources={"roots": r["roots"]}) as ctx:
                out = sa1b_new_dirs_sensor(ctx)
            for req in out.dynamic_partitions_requests:
                instance.add_dynamic_partitions("sa1b_dirs", list(req.partition_keys))
            for ev in out.asset_events:
                instance.report_runless_asset_event(ev)
            cursor = out.cursor
            return out

        def status(asset, with_assets=assets):
            graph_assets = [AssetsDefinition(specs=[with_assets[0]]), *with_assets[1:]]
            resolver = get_stale_status_resolver(instance, graph_assets)
            return resolver.get_status(AssetKey(asset), key), resolver.get_stale_causes(AssetKey(asset), key)

        first = tick()
        assert [q.partition_key for q in first.run_requests] == [key]
        materialize([sa1b_npz_files, *fixed], selection=fixed, partition_key=key, instance=instance, resources=r)
        for asset in ("edges_B_v1", "sa1b_features_fixed"):
            assert status(asset)[0] == StaleStatus.FRESH, status(asset)
        assert not tick().run_requests  # our own rewrites change no NPZ name: nothing observed, still fresh
        assert status("edges_B_v1")[0] == StaleStatus.FRESH

        shutil.copy(res.npz[0], os.path.join(os.path.dirname(res.npz[0]), "sa_new_features.npz"))
        tick()
        st, causes = status("edges_B_v1")
        assert st == StaleStatus.STALE and any(c.category.value == "DATA" for c in causes), causes
        materialize([sa1b_npz_files, *fixed], selection=fixed, partition_key=key, instance=instance, resources=r)
        assert status("edges_B_v1")[0] == StaleStatus.FRESH

        other = [sa1b_npz_files, *versioned(Sam2Teacher(random_init_seed=1, resolution=RES, device="cpu"), 3)]
        st, causes = status("sa1b_features_fixed", other)
        assert st == StaleStatus.STALE and [c.category.value for c in causes] == ["CODE"], causes
        assert status("edges_B_v1", other)[0] == StaleStatus.FRESH
        st, causes = status("edges_B_v1", [sa1b_npz_files, *versioned(TEACHER, 5)])
        assert st == StaleStatus.STALE and causes[0].category.value == "CODE"

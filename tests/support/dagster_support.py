"""Shared by the Dagster tests: the small teacher, shards as partitions, resources, reading results back."""

import os

from dagster import AssetKey

from npzfix_core import synth
from npzfix_dagster.execution import Execution
from npzfix_dagster.resources import DatasetRoots, FeaturePipeline, Sam2Teacher


RES = 256
TEACHER = Sam2Teacher(random_init_seed=0, resolution=RES, device="cpu")


def partition(tmp_path, instance, name, **kw):
    """A shard under tmp_path/sa1b, registered as a partition: (root, synth result, key, resources)."""
    root = str(tmp_path / "sa1b")
    res = shard(root, name, **kw)
    key = f"{name}/extracted"
    instance.add_dynamic_partitions("sa1b_dirs", [key])
    return root, res, key, resources(tmp_path, sa1b=root)


def shard(root, name, n=4, states=("fresh", "with_256", "flagged", "stale"), seed=0):
    return synth.generate(
        os.path.join(root, name),
        synth.SynthSpec(n=n, seed=seed, sizes=((120, 160), (300, 260)), masks=12, states=states, feature_hw=RES // 16),
    )


def resources(tmp_path, sa1b=None, tt=None):
    return {
        "roots": DatasetRoots(sa1b_root=sa1b, train_test_root=tt, preview_dir=str(tmp_path / "previews")),
        "teacher": TEACHER,
        "pipeline": FeaturePipeline(),
        "execution": Execution(),
    }


def md_of(result, asset):
    mats = [
        e.event_specific_data.materialization
        for e in result.get_asset_materialization_events()
        if e.event_specific_data.materialization.asset_key == AssetKey(asset)
    ]
    return mats[-1].metadata


def check_results(result):
    return {
        e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data.passed
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }


def env_for(tmp_path, root):
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text(
        open(os.path.join(os.path.dirname(__file__), "..", "..", "deploy", "dagster.yaml")).read()
    )
    return dict(
        os.environ,
        DAGSTER_HOME=str(home),
        NPZFIX_SA1B_ROOT=root,
        NPZFIX_RANDOM_INIT_SEED="0",
        NPZFIX_RESOLUTION=str(RES),
        NPZFIX_DEVICE="cpu",
        NPZFIX_PREVIEW_DIR=str(tmp_path / "previews"),
    )


def evals(result):
    return {
        e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }

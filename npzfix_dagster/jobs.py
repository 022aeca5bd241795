"""Jobs: the asset jobs the sensors and schedules launch (with their pod resources), and sample-list repair."""

from dagster import (
    AssetSelection,
    Failure,
    Nothing,
    OpExecutionContext,
    Out,
    Output,
    define_asset_job,
    job,
    op,
)

from npzfix_dagster.execution import steps
from npzfix_dagster.config import SampleListConfig, sample_list_request
from npzfix_dagster.contracts import EDGES, SA1B_FEATURES, SA1B_SHARDS, TRAIN_TEST_FEATURES, TRAIN_TEST_SHARDS
from npzfix_dagster.execution import Execution
from npzfix_dagster.k8s import CPU_TAGS, GPU_TAGS
from npzfix_dagster.resources import FeaturePipeline, Sam2Teacher

sa1b_job = define_asset_job(
    "sa1b_job",
    selection=AssetSelection.assets(SA1B_FEATURES, EDGES),
    description="Features and edges for one SA-1B directory (one GPU).",
    tags=GPU_TAGS,
)
sa1b_edges_job = define_asset_job(
    "sa1b_edges_job",
    selection=AssetSelection.assets(EDGES),
    description="Edges only for one SA-1B directory (CPU: no GPU requested).",
    tags=CPU_TAGS,
)
sa1b_shards_job = define_asset_job(
    "sa1b_shards_job",
    selection=AssetSelection.assets(SA1B_SHARDS),
    description="Training shards of one SA-1B directory, rebuilt where a member changed (CPU).",
    tags=CPU_TAGS,
)
train_test_shards_job = define_asset_job(
    "train_test_shards_job",
    selection=AssetSelection.assets(TRAIN_TEST_SHARDS),
    description="Training shards of one train/test split, rebuilt where a member changed (CPU).",
    tags=CPU_TAGS,
)
train_test_job = define_asset_job(
    "train_test_job",
    selection=AssetSelection.assets(TRAIN_TEST_FEATURES),
    description="Features for one train/test split (one GPU).",
    tags=GPU_TAGS,
)


@op(
    pool="gpu",
    tags=GPU_TAGS,
    out=Out(Nothing),
    description="Recompute P4_S16, P5_S32 and IMAGE_EMB_S16 for the images of a sample list (no flag).",
)
def fix_from_sample_list(
    context: OpExecutionContext,
    config: SampleListConfig,
    teacher: Sam2Teacher,
    pipeline: FeaturePipeline,
    execution: Execution,
):
    try:
        req = sample_list_request(config, teacher, pipeline)
        req.validate()
    except (ValueError, FileNotFoundError) as exc:
        raise Failure(description=str(exc)) from exc
    step = steps.FeatureStep(req)
    md, failed = execution.run_op(context, step, config.report, config.samples)
    if failed:
        raise Failure(description=f"{failed} file(s) failed; all others were processed", metadata=md)
    return Output(None, metadata=md)  # the NPZ files are the result: nothing is stored by an IO manager


@job(
    tags=GPU_TAGS,
    description="Sample-list repair: recompute the NPZs of the images in a list, NPZs scattered over --npz-dirs. Launch with run config.",
)
def sample_list_job():
    fix_from_sample_list()

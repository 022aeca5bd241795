"""The three caches, one partition per dataset directory. The files are the asset: nothing is pickled.

Each body turns config and resources into one step (a core request, ``npzfix_dagster.execution.steps``) and hands it to
the ``execution`` resource, which runs it here or as a Slurm job; the step's outcome becomes metadata and
check results the same way either way. All computation lives in ``npzfix_core``.
"""

import os
import zlib
from typing import Callable

from dagster import AssetExecutionContext, Failure, MaterializeResult, asset

from npzfix_core import edge_rules
from npzfix_core.requests import BULK, TRAIN_TEST
from npzfix_dagster import asset_checks
from npzfix_dagster.execution import steps
from npzfix_dagster.contracts import EDGES, SA1B_FEATURES, TRAIN_TEST_FEATURES
from npzfix_dagster.execution import Execution
from npzfix_dagster.config import EdgesConfig, FeaturesConfig, edge_request, feature_request
from npzfix_dagster.k8s import CPU_TAGS, GPU_TAGS
from npzfix_dagster.partitions import PartitionKeyError, sa1b_dir, sa1b_dirs, split_extracted_dir, train_test_splits
from npzfix_dagster.resources import (
    DatasetRoots,
    FeaturePipeline,
    Sam2Teacher,
    edges_code_version,
    features_code_version,
)
from npzfix_dagster.sources import sa1b_npz_files, train_test_npz_files


def _partition_dir(root: str, key: str, to_dir: Callable[[str, str], str]) -> str:
    """The partition's directory; a key outside its root or a vanished directory is a clear Failure."""
    try:
        path = to_dir(root, key)
    except PartitionKeyError as exc:
        raise Failure(description=f"refusing partition {key!r}: {exc}; no file was touched") from exc
    if not os.path.isdir(path):
        raise Failure(
            description=f"partition {key!r}: directory {path} does not exist (moved or deleted?)",
            metadata={"directory": path},
        )
    return path


def features_asset(name: str, mode: str, partitions_def, source, root: str, to_dir, group: str, doc: str):
    """One feature cache asset (SA-1B shards or train/test splits): the same body, only where its partitions
    live and how a key becomes a directory differ."""

    @asset(
        name=name,
        partitions_def=partitions_def,
        deps=[source],
        check_specs=asset_checks.specs(name, partitions_def),
        pool="gpu",
        op_tags=GPU_TAGS,
        group_name=group,
        kinds={"numpy", "pytorch"},
        description=doc,
    )
    def _asset(
        context: AssetExecutionContext,
        config: FeaturesConfig,
        roots: DatasetRoots,
        teacher: Sam2Teacher,
        pipeline: FeaturePipeline,
        execution: Execution,
    ) -> MaterializeResult:
        from npzfix_core import discovery

        directory = _partition_dir(roots.require(root), context.partition_key, to_dir)
        try:
            req = feature_request(config, teacher, pipeline, mode, directory)
            req.validate()
        except (ValueError, FileNotFoundError) as exc:
            raise Failure(description=f"bad run config: {exc}; no file was touched") from exc
        step = steps.FeatureStep(
            req,
            config.verify_sample,
            image_dir=os.path.dirname(directory) if mode == TRAIN_TEST else None,
            seed=zlib.crc32(context.run.run_id.encode()),  # another random sample each run: coverage grows
        )
        place = steps.Place.of(context, roots.previews())
        return execution.materialize(context, step, place, discovery.snapshot(directory))

    return _asset


sa1b_features_fixed = features_asset(
    SA1B_FEATURES,
    BULK,
    sa1b_dirs,
    sa1b_npz_files,
    "sa1b_root",
    sa1b_dir,
    "sa1b",
    "Every SA-1B NPZ in this directory carries P4_S16/P5_S32 from the configured SAM2 teacher, with feature_flag=1 "
    "and the teacher's provenance.",
)
train_test_features_fixed = features_asset(
    TRAIN_TEST_FEATURES,
    TRAIN_TEST,
    train_test_splits,
    train_test_npz_files,
    "train_test_root",
    split_extracted_dir,
    "train_test",
    "Every NPZ in <split>/extracted carries P4_S16/P5_S32 from the configured SAM2 teacher, computed from the "
    "image in <split>/, with feature_flag=1.",
)


@asset(
    name=EDGES,
    partitions_def=sa1b_dirs,
    deps=[sa1b_npz_files],
    check_specs=asset_checks.specs(EDGES, sa1b_dirs),
    op_tags=CPU_TAGS,
    group_name="sa1b",
    kinds={"numpy", "opencv"},
)
def edges_B_v1(
    context: AssetExecutionContext, config: EdgesConfig, roots: DatasetRoots, execution: Execution
) -> MaterializeResult:
    """Every SA-1B NPZ in this directory carries Method-B edge maps (edge_64x64, edge_32x32, and edge_256x256
    where present) computed from its SA-1B JSON, flagged B_v1 with the kernel size."""
    from npzfix_core import discovery

    directory = _partition_dir(roots.require("sa1b_root"), context.partition_key, sa1b_dir)
    try:
        req = edge_request(config, directory, roots.json_dir_for(directory))
        req.validate()
    except (ValueError, FileNotFoundError) as exc:
        raise Failure(description=f"bad run config: {exc}; no file was touched") from exc
    place = steps.Place.of(context, roots.previews())
    return execution.materialize(context, steps.EdgeStep(req), place, discovery.snapshot(directory))


def versioned(teacher: Sam2Teacher, kernel_size: int, rule: str = edge_rules.DEFAULT) -> list:
    """The three assets with code versions from what defines their output (the configured teacher, the edge
    rule and kernel): after a change, the UI shows each partition as stale, "code version changed"."""
    fv, ev = features_code_version(teacher), edges_code_version(rule, kernel_size)
    return [
        sa1b_features_fixed.map_asset_specs(lambda spec: spec.replace_attributes(code_version=fv)),
        train_test_features_fixed.map_asset_specs(lambda spec: spec.replace_attributes(code_version=fv)),
        edges_B_v1.map_asset_specs(lambda spec: spec.replace_attributes(code_version=ev)),
    ]

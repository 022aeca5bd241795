"""The three caches, one partition per dataset directory. The files are the asset: nothing is pickled.

Each body turns config and resources into one core call; ``_result`` turns the core's report into
metadata and check results. All computation lives in ``npzfix_core``.
"""

import os
import re
import zlib
from typing import Callable, Optional

from dagster import AssetExecutionContext, Failure, MaterializeResult, asset

from npzfix_core.report import RunReport
from npzfix_core.requests import BULK, TRAIN_TEST
from npzfix_dagster import checks, metadata
from npzfix_dagster.contracts import EDGES, SA1B_FEATURES, TRAIN_TEST_FEATURES
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


def _result(
    context: AssetExecutionContext,
    roots: DatasetRoots,
    directory: str,
    seen_dir,
    report: RunReport,
    sample_check: Callable[[list[str]], object],
    glob: Optional[str] = None,
) -> MaterializeResult:
    """Report file, checks over the directory as the run left it, preview, metadata: the same for every asset."""
    from npzfix_core import discovery, preview

    safe = re.sub(r"[^A-Za-z0-9_.-]+", "__", context.partition_key)
    base = os.path.join(roots.previews(), context.asset_key.to_user_string(), f"{safe}.{context.run.run_id[:8]}")
    json_path, _ = report.write(base + ".report")
    after = discovery.snapshot(directory)
    # what the daily re-check compares with: the directory as the run left it, unless names changed while it
    # ran (then the start, so that the change is seen)
    seen_dir = after if after.signature == seen_dir.signature else seen_dir
    paths = discovery.npz_in_dir(directory, glob)
    png = preview.render(paths, base + ".preview.png")
    context.log.info(report.summary())
    return MaterializeResult(
        metadata={
            **metadata.report_metadata(report, directory, json_path, seen_dir),
            **metadata.preview_metadata(png),
        },
        check_results=[checks.no_failed_files(report), sample_check(paths)],
    )


def _features(
    context: AssetExecutionContext,
    config: FeaturesConfig,
    roots: DatasetRoots,
    teacher: Sam2Teacher,
    pipeline: FeaturePipeline,
    mode: str,
    directory: str,
) -> MaterializeResult:
    from npzfix_core import discovery
    from npzfix_core.feature_repair import run_features
    from npzfix_core.teacher import LazyTeacher

    tolerance = config.tolerance()
    try:
        req = feature_request(config, teacher, pipeline, mode, directory)
        req.validate()
    except (ValueError, FileNotFoundError) as exc:
        raise Failure(description=f"bad run config: {exc}; no file was touched") from exc
    # one teacher for the run and its check: built (and the GPU leased) only if a file or the check needs it
    lazy = LazyTeacher(req.teacher, factory=lambda: teacher.build(req.settings))
    seen_dir = discovery.snapshot(directory)
    report = run_features(req, teacher=lazy, progress=True)
    image_dir = os.path.dirname(directory) if mode == TRAIN_TEST else None
    seed = zlib.crc32(context.run.run_id.encode())  # another random sample each run: coverage grows

    def sample_check(paths):
        return checks.features_sample_valid(
            paths, lazy, report, config.verify_sample, tolerance, image_dir, seed, req.settings.jpeg_decoder
        )

    return _result(context, roots, directory, seen_dir, report, sample_check)


@asset(
    name=SA1B_FEATURES,
    partitions_def=sa1b_dirs,
    deps=[sa1b_npz_files],
    check_specs=checks.specs(SA1B_FEATURES, sa1b_dirs),
    pool="gpu",
    op_tags=GPU_TAGS,
    group_name="sa1b",
    kinds={"numpy", "pytorch"},
)
def sa1b_features_fixed(
    context: AssetExecutionContext,
    config: FeaturesConfig,
    roots: DatasetRoots,
    teacher: Sam2Teacher,
    pipeline: FeaturePipeline,
) -> MaterializeResult:
    """Every SA-1B NPZ in this directory carries P4_S16/P5_S32 from the configured SAM2 teacher, with
    feature_flag=1 and the teacher's provenance."""
    directory = _partition_dir(roots.require("sa1b_root"), context.partition_key, sa1b_dir)
    return _features(context, config, roots, teacher, pipeline, BULK, directory)


@asset(
    name=TRAIN_TEST_FEATURES,
    partitions_def=train_test_splits,
    deps=[train_test_npz_files],
    check_specs=checks.specs(TRAIN_TEST_FEATURES, train_test_splits),
    pool="gpu",
    op_tags=GPU_TAGS,
    group_name="train_test",
    kinds={"numpy", "pytorch"},
)
def train_test_features_fixed(
    context: AssetExecutionContext,
    config: FeaturesConfig,
    roots: DatasetRoots,
    teacher: Sam2Teacher,
    pipeline: FeaturePipeline,
) -> MaterializeResult:
    """Every NPZ in <split>/extracted carries P4_S16/P5_S32 from the configured SAM2 teacher, computed from
    the image in <split>/, with feature_flag=1."""
    directory = _partition_dir(roots.require("train_test_root"), context.partition_key, split_extracted_dir)
    return _features(context, config, roots, teacher, pipeline, TRAIN_TEST, directory)


@asset(
    name=EDGES,
    partitions_def=sa1b_dirs,
    deps=[sa1b_npz_files],
    check_specs=checks.specs(EDGES, sa1b_dirs),
    op_tags=CPU_TAGS,
    group_name="sa1b",
    kinds={"numpy", "opencv"},
)
def edges_B_v1(context: AssetExecutionContext, config: EdgesConfig, roots: DatasetRoots) -> MaterializeResult:
    """Every SA-1B NPZ in this directory carries Method-B edge maps (edge_64x64, edge_32x32, and edge_256x256
    where present) computed from its SA-1B JSON, flagged B_v1 with the kernel size."""
    from npzfix_core import discovery
    from npzfix_core.edge_repair import run_edges

    key = context.partition_key
    directory = _partition_dir(roots.require("sa1b_root"), key, sa1b_dir)
    json_dir = roots.json_dir_for(directory)
    try:
        req = edge_request(config, directory, json_dir)
        req.validate()
    except (ValueError, FileNotFoundError) as exc:
        raise Failure(description=f"bad run config: {exc}; no file was touched") from exc
    seen_dir = discovery.snapshot(directory)
    report = run_edges(req, progress=True)
    sample_check = lambda paths: checks.edges_sample_valid(  # noqa: E731
        paths, req.kernel_size, json_dir, req.settings.max_pixels
    )
    return _result(context, roots, directory, seen_dir, report, sample_check, config.glob)


def versioned(teacher: Sam2Teacher, kernel_size: int) -> list:
    """The three assets with code versions from what defines their output (the configured teacher, the edge
    rule and kernel): after a change, the UI shows each partition as stale, "code version changed"."""
    fv, ev = features_code_version(teacher), edges_code_version(kernel_size)
    return [
        sa1b_features_fixed.map_asset_specs(lambda spec: spec.replace_attributes(code_version=fv)),
        train_test_features_fixed.map_asset_specs(lambda spec: spec.replace_attributes(code_version=fv)),
        edges_B_v1.map_asset_specs(lambda spec: spec.replace_attributes(code_version=ev)),
    ]

"""The three caches, one partition per dataset directory. The files are the asset: nothing is pickled.

Each body turns config and resources into one core call, then the core's report
into metadata and check results; all computation lives in ``npzfix_core``.
"""

import os
import re
import warnings
from typing import Optional

from dagster import AssetCheckSpec, AssetExecutionContext, Config, Failure, MaterializeResult, asset

from npzfix_dagster import metadata
from npzfix_dagster.k8s import CPU_TAGS, GPU_TAGS
from npzfix_dagster.partitions import PartitionKeyError, sa1b_dir, sa1b_dirs, split_extracted_dir, train_test_splits
from npzfix_dagster.resources import DatasetRoots, Sam2Teacher


def _checks(key: str, partitions_def) -> list[AssetCheckSpec]:
    """Checks recorded per partition (Dagster marks partitioned check specs as a preview feature)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the preview warning, once per definition load
        return [
            AssetCheckSpec(
                "no_failed_files",
                asset=key,
                partitions_def=partitions_def,
                description="Every file of the partition was processed without error.",
            ),
            AssetCheckSpec(
                "sample_valid",
                asset=key,
                partitions_def=partitions_def,
                description="A sample of files has the right keys, shapes, dtypes, values, flags and provenance.",
            ),
        ]


SAMPLE = 8


class FeaturesConfig(Config):
    """Mirrors ``npzfix features`` flags."""

    max_files: Optional[int] = None
    force: bool = False
    dry_run: bool = False
    store_dtype: str = "keep"
    durable: bool = True


class EdgesConfig(Config):
    """Mirrors ``npzfix edges`` flags."""

    kernel_size: int = 3
    max_files: Optional[int] = None
    skip_if_processed: bool = True
    set_edge_flag: bool = True
    workers: int = 1
    glob: Optional[str] = None
    order: str = "name"
    dry_run: bool = False
    durable: bool = True


def _partition_dir(root: str, key: str, to_dir) -> str:
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


def _report_path(roots: DatasetRoots, asset_name: str, key: str, run_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "__", key)
    return os.path.join(roots.previews(), asset_name, f"{safe}.{run_id[:8]}.report")


def _features(
    context,
    config: FeaturesConfig,
    roots: DatasetRoots,
    teacher: Sam2Teacher,
    mode: str,
    directory: str,
    asset_name: str,
) -> MaterializeResult:
    from npzfix_core import discovery, preview
    from npzfix_core.feature_repair import FeatureRequest, default_decode_workers, run_features
    from npzfix_core.validate import check_features, sample

    key = context.partition_key
    req = FeatureRequest(
        mode=mode,
        teacher=teacher.spec(),
        root=directory if mode == "bulk" else None,
        recursive=False,  # a partition is the NPZ files directly in its directory
        extracted_dirs=(directory,) if mode == "train_test" else (),
        max_files=config.max_files,
        batch_size=teacher.batch_size,
        workers=teacher.decode_workers or default_decode_workers(),
        store_dtype=config.store_dtype,
        force=config.force,
        dry_run=config.dry_run,
        durable=config.durable,
    )
    needs_model = not config.dry_run
    seen_dir = discovery.snapshot(directory)
    report = run_features(req, teacher=_LazyTeacher(teacher) if needs_model else None, progress=True)
    base = _report_path(roots, asset_name, key, context.run.run_id)
    json_path, _ = report.write(base)
    paths = discovery.npz_in_dir(directory)
    check = check_features(sample(paths, SAMPLE), teacher.provenance(), needs_flag=True)
    png = preview.render(paths, base[: -len(".report")] + ".preview.png")
    context.log.info(report.summary())
    return MaterializeResult(
        metadata={
            **metadata.report_metadata(report, directory, json_path, seen_dir),
            **metadata.preview_metadata(png),
        },
        check_results=[metadata.no_failures_check(report), metadata.sample_check(check)],
    )


class _LazyTeacher:
    """Hands the core a teacher whose model is built only if some file needs it."""

    def __init__(self, resource: Sam2Teacher):
        self._resource = resource
        self.provenance = resource.provenance()
        self.resolution = self.provenance["resolution"]

    def __getattr__(self, name):
        return getattr(self._resource.get(), name)


@asset(
    partitions_def=sa1b_dirs,
    check_specs=_checks("sa1b_features_fixed", sa1b_dirs),
    pool="gpu",
    op_tags=GPU_TAGS,
    group_name="sa1b",
    kinds={"numpy", "pytorch"},
)
def sa1b_features_fixed(
    context: AssetExecutionContext, config: FeaturesConfig, roots: DatasetRoots, teacher: Sam2Teacher
) -> MaterializeResult:
    """Every SA-1B NPZ in this directory carries P4_S16/P5_S32 from the configured SAM2 teacher, with
    feature_flag=1 and the teacher's provenance (tool 1: bulk_fix_npz_features)."""
    directory = _partition_dir(roots.require("sa1b_root"), context.partition_key, sa1b_dir)
    return _features(context, config, roots, teacher, "bulk", directory, "sa1b_features_fixed")


@asset(
    partitions_def=train_test_splits,
    check_specs=_checks("train_test_features_fixed", train_test_splits),
    pool="gpu",
    op_tags=GPU_TAGS,
    group_name="train_test",
    kinds={"numpy", "pytorch"},
)
def train_test_features_fixed(
    context: AssetExecutionContext, config: FeaturesConfig, roots: DatasetRoots, teacher: Sam2Teacher
) -> MaterializeResult:
    """Every NPZ in <split>/extracted carries P4_S16/P5_S32 from the configured SAM2 teacher, computed from
    the image in <split>/, with feature_flag=1 (tool 3: fix_train_test_npz)."""
    key = context.partition_key
    directory = _partition_dir(roots.require("train_test_root"), key, split_extracted_dir)
    return _features(context, config, roots, teacher, "train_test", directory, "train_test_features_fixed")


@asset(
    partitions_def=sa1b_dirs,
    check_specs=_checks("edges_B_v1", sa1b_dirs),
    op_tags=CPU_TAGS,
    group_name="sa1b",
    kinds={"numpy", "opencv"},
)
def edges_B_v1(context: AssetExecutionContext, config: EdgesConfig, roots: DatasetRoots) -> MaterializeResult:
    """Every SA-1B NPZ in this directory carries Method-B edge maps (edge_64x64, edge_32x32, and edge_256x256
    where present) computed from its SA-1B JSON, flagged B_v1 with the kernel size
    (tool 4: update_edge_maps_from_npz)."""
    from npzfix_core import discovery, preview
    from npzfix_core.edge_repair import EdgeRequest, run_edges
    from npzfix_core.validate import check_edges, sample

    key = context.partition_key
    directory = _partition_dir(roots.require("sa1b_root"), key, sa1b_dir)
    json_dir = roots.json_dir_for(key)
    req = EdgeRequest(
        npz_dir=directory,
        json_dir=json_dir,
        kernel_size=config.kernel_size,
        max_files=config.max_files,
        skip_if_processed=config.skip_if_processed,
        set_flag=config.set_edge_flag,
        order=config.order,
        glob=config.glob,
        workers=config.workers,
        dry_run=config.dry_run,
        durable=config.durable,
    )
    seen_dir = discovery.snapshot(directory)
    report = run_edges(req, progress=True)
    base = _report_path(roots, "edges_B_v1", key, context.run.run_id)
    json_path, _ = report.write(base)
    paths = discovery.npz_in_dir(directory, config.glob)
    check = check_edges(sample(paths, SAMPLE), config.kernel_size, json_dir)
    png = preview.render(paths, base[: -len(".report")] + ".preview.png")
    context.log.info(report.summary())
    return MaterializeResult(
        metadata={
            **metadata.report_metadata(report, directory, json_path, seen_dir),
            **metadata.preview_metadata(png),
        },
        check_results=[metadata.no_failures_check(report), metadata.sample_check(check)],
    )

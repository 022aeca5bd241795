"""Run config of the assets and jobs, and the one constructor of each core request from config + resources.

The fields mirror ``npzfix_core.requests`` (names and defaults; ``tests/dagster/test_config.py`` holds them to it).
Where Dagster's default differs from the CLI's on purpose, ``DAGSTER_DEFAULTS`` says so; where a field comes
from a resource or the partition rather than run config, ``FROM_RESOURCES`` says so.
"""

from __future__ import annotations

from dataclasses import fields
from typing import List, Optional

from dagster import Config
from pydantic import Field

from npzfix_core.requests import BULK, SAMPLES, TRAIN_TEST, EdgeRequest, FeatureRequest, default_decode_threads
from npzfix_core.verify import Tolerance
from npzfix_dagster.env import default_edge_kernel, default_edge_rule, default_edge_workers, run_settings
from npzfix_dagster.resources import FeaturePipeline, Sam2Teacher

# Defaults chosen for scheduled runs: a partition is processed in name order (stable across re-runs, and no stat
# per file as the original's mtime order needs), and the edge kernel / worker processes come from the code
# location's environment (read when the run builds its request: None in run config means "the environment's,
# else the CLI's").
DAGSTER_DEFAULTS = {
    EdgeRequest: {
        "order": "name: stable across re-runs of a partition, no stat per file",
        "kernel_size": "NPZFIX_EDGE_KERNEL",
        "rule": "NPZFIX_EDGE_RULE",
        "worker_processes": "NPZFIX_EDGE_WORKERS",
    }
}
# Request fields set by the partition or a resource, not by run config (and Config names that differ).
FROM_RESOURCES = {
    EdgeRequest: {"npz_dir", "json_dir", "recursive", "settings"},  # the partition; settings: the environment
    FeatureRequest: {
        *("mode", "teacher", "root", "recursive", "samples", "npz_dirs", "extracted_dirs"),  # the partition
        *("batch_size", "decode_threads"),  # the pipeline resource
        *("writers", "preprocess_on"),  # the request's defaults
        "tolerance",  # min_cosine, max_rel_error
        "settings",  # the environment, read per run
    },
}
RENAMED = {"set_flag": "set_edge_flag"}
# The sample-list job is the original in-place tool: it writes no flag, so what only matters for flagged files is
# not run config there (the request's default stands); and its bound keeps the original's name.
SAMPLE_LIST_UNUSED = {
    "force": "no flag is read: every listed file is recomputed anyway",
    "legacy": "no flag is read: no file counts as the original tool's",
    "legacy_sample": "as legacy",
    "drift_sample": "no flag is read: no file is known to be another teacher's",
}
SAMPLE_LIST_RENAMED = {"max_files": "max_images"}


class FeaturesConfig(Config):
    """Mirrors ``npzfix features`` flags."""

    max_files: Optional[int] = None
    force: bool = False
    dry_run: bool = False
    store_dtype: str = "keep"
    durable: bool = True
    legacy: str = Field("skip", description="files flagged by the original tool: skip | verify (adopt or redo) | redo")
    legacy_sample: int = Field(4, description="legacy files recomputed per directory before adopting the rest")
    drift_sample: int = Field(8, description="files redone for another teacher whose old features are compared")
    verify_sample: int = Field(2, description="files sample_valid recomputes with the run's teacher")
    min_cosine: float = Tolerance().min_cosine
    max_rel_error: float = Tolerance().max_rel_error

    def tolerance(self) -> Tolerance:
        return Tolerance(self.min_cosine, self.max_rel_error)


class EdgesConfig(Config):
    """Mirrors ``npzfix edges`` flags."""

    rule: Optional[str] = Field(
        None, description="the edge rule (npzfix_core/edge_rules.py); None: $NPZFIX_EDGE_RULE, else method_b"
    )
    kernel_size: Optional[int] = Field(
        None, description="None: $NPZFIX_EDGE_KERNEL, else the rule's default (3); part of the asset's code version"
    )
    max_files: Optional[int] = None
    skip_if_processed: bool = True
    set_edge_flag: bool = True
    worker_processes: Optional[int] = Field(
        None, description="None: $NPZFIX_EDGE_WORKERS, else 1; 0: one per usable CPU"
    )
    workers: Optional[int] = Field(None, description="the old name of worker_processes (wins when given)")
    glob: Optional[str] = None
    order: str = Field("name", description="name | mtime (the CLI's --sort-by; its default there is mtime)")
    reverse: bool = False
    only_mtime_after: Optional[float] = Field(None, description="only NPZs modified after this epoch time")
    dry_run: bool = False
    durable: bool = True
    retry_killed: bool = False


class SampleListConfig(Config):
    """Mirrors ``npzfix features --samples LIST --npz-dirs a,b``."""

    samples: str
    npz_dirs: List[str] = []
    max_images: Optional[int] = None
    store_dtype: str = "keep"
    dry_run: bool = False
    durable: bool = True
    report: Optional[str] = Field(None, description="also write the run's report here (PATH.json, PATH.csv)")


def _from_config(cls, config: Config, given: dict) -> dict:
    """Every request field that run config holds (under its own name or ``RENAMED``), plus ``given``."""
    out = dict(given)
    for f in fields(cls):
        name = RENAMED.get(f.name, f.name)
        if f.name not in out and name in type(config).model_fields:
            out[f.name] = getattr(config, name)
    return out


def edge_rule(config: EdgesConfig) -> str:
    """The rule a run uses (and its check and code version expect): run config, else the environment's."""
    return config.rule or default_edge_rule()


def edge_kernel(config: EdgesConfig) -> int:
    """The kernel a run uses: run config, else the environment's, else the rule's default."""
    return config.kernel_size if config.kernel_size is not None else default_edge_kernel(edge_rule(config))


def edge_request(config: EdgesConfig, npz_dir: str, json_dir: Optional[str]) -> EdgeRequest:
    workers = config.workers if config.workers is not None else config.worker_processes
    given = {
        "npz_dir": npz_dir,
        "json_dir": json_dir,
        "recursive": False,  # a partition is exactly the NPZ files directly in its directory
        "rule": edge_rule(config),
        "kernel_size": edge_kernel(config),
        "worker_processes": workers if workers is not None else default_edge_workers(),
        "settings": run_settings(),
    }
    return EdgeRequest(**_from_config(EdgeRequest, config, given))


def _teacher_and_feed(teacher: Sam2Teacher, pipeline: FeaturePipeline) -> dict:
    return {
        "teacher": teacher.spec(),
        "batch_size": pipeline.batch_size,
        "decode_threads": pipeline.decode_threads or default_decode_threads(),
        "settings": run_settings(),
    }


def feature_request(
    config: FeaturesConfig, teacher: Sam2Teacher, pipeline: FeaturePipeline, mode: str, directory: str
) -> FeatureRequest:
    """A partition's request: only the NPZ files directly in its directory."""
    given = {
        **_teacher_and_feed(teacher, pipeline),
        "mode": mode,
        "root": directory if mode == BULK else None,
        "recursive": False,
        "extracted_dirs": (directory,) if mode == TRAIN_TEST else (),
        "tolerance": config.tolerance(),
    }
    return FeatureRequest(**_from_config(FeatureRequest, config, given))


def sample_list_request(
    config: SampleListConfig, teacher: Sam2Teacher, pipeline: FeaturePipeline
) -> FeatureRequest:
    given = {**_teacher_and_feed(teacher, pipeline), "mode": SAMPLES, "npz_dirs": tuple(config.npz_dirs), "max_files": config.max_images}
    return FeatureRequest(**_from_config(FeatureRequest, config, given))

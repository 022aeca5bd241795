"""The asset checks: their specs (recorded per partition) and their evaluation through ``npzfix_core.validate``.

They run inside each materialization (a re-check is a cheap re-materialization: done files are skipped),
so every evaluation belongs to the partition and run that produced the files it looks at.
"""

from __future__ import annotations

import warnings

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, MetadataValue, PreviewWarning

from npzfix_core.provenance import FeatureProvenance
from npzfix_core.report import FAILED, MISSING, RunReport
from npzfix_core.validate import CheckResult, check_edges, check_features, sample
from npzfix_dagster.metadata import md_table

SAMPLE = 8  # files per partition whose content is checked (edges: recomputed exactly)
NO_FAILED_FILES = "no_failed_files"
SAMPLE_VALID = "sample_valid"


def specs(asset: str, partitions_def) -> list[AssetCheckSpec]:
    """Checks recorded per partition (Dagster 1.13 calls partitioned check specs a preview feature)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PreviewWarning)
        return [
            AssetCheckSpec(
                NO_FAILED_FILES,
                asset=asset,
                partitions_def=partitions_def,
                description="Every file of the partition was processed without error.",
            ),
            AssetCheckSpec(
                SAMPLE_VALID,
                asset=asset,
                partitions_def=partitions_def,
                description="A sample of files has the right keys, shapes, dtypes, values, flags and provenance.",
            ),
        ]


def no_failed_files(report: RunReport) -> AssetCheckResult:
    return AssetCheckResult(
        check_name=NO_FAILED_FILES,
        passed=report.counts[FAILED] == 0,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "failed": report.counts[FAILED],
            "missing_source": report.counts[MISSING],
            "failures": MetadataValue.md(md_table(report.failures, ["path", "status", "reason"])),
        },
    )


def _sample_valid(result: CheckResult) -> AssetCheckResult:
    return AssetCheckResult(
        check_name=SAMPLE_VALID,
        passed=result.passed,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "checked": result.checked,
            "problems": len(result.problems),
            "legacy_flagged": result.legacy_flagged,
            "details": MetadataValue.md(md_table(result.problems, ["path", "problem", "remedy"])),
        },
    )


def edges_sample_valid(paths: list[str], kernel_size: int, json_dir: str | None) -> AssetCheckResult:
    return _sample_valid(check_edges(sample(paths, SAMPLE), kernel_size, json_dir))


def features_sample_valid(paths: list[str], teacher: FeatureProvenance) -> AssetCheckResult:
    return _sample_valid(check_features(sample(paths, SAMPLE), teacher, needs_flag=True))

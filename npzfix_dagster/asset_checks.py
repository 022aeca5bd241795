"""The asset checks: their specs (recorded per partition) and their results, from what ``npzfix_core.sampling``
found in a step's sample.

They run inside each materialization (a re-check is a cheap re-materialization: done files are skipped),
so every evaluation belongs to the partition and run that produced the files it looks at.
"""

from __future__ import annotations

import warnings

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, MetadataValue, PreviewWarning

from npzfix_core.report import FAILED, MISSING, RunReport
from npzfix_core.checks import CheckResult
from npzfix_dagster.metadata import files_table

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
                description=(
                    "A sample of files has the right keys, shapes, dtypes, flags and provenance, and its values are "
                    "the teacher's (features: recomputed and compared; edges: recomputed exactly)."
                ),
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
            "failures": MetadataValue.md(files_table(report.failures, ["status", "reason"])),
        },
    )


def sample_valid(result: CheckResult, extra: dict | None = None) -> AssetCheckResult:
    """Any mismatch or unusable file is an ERROR; a sample that could only not be verified (images gone) WARNs:
    it is not a pass, and not evidence of wrong data either."""
    only_unverifiable = result.problems and len(result.problems) == result.unverifiable
    md = {
        "checked": result.checked,
        "problems": len(result.problems),
        "legacy_flagged": result.legacy_flagged,
        "carried_members": ", ".join(f"{k} ({n})" for k, n in sorted(result.carried.items())) or "none",
        "details": MetadataValue.md(files_table(result.problems, ["problem", "remedy"])),
        **(extra or {}),
    }
    if result.verification is not None:
        v = result.verification
        md.update(
            verified_by_value=v.verified,
            not_verifiable=v.not_verifiable,
            verify_seconds=v.seconds,
            **{f"min_cosine_{k}": c for k, c in v.min_cosine.items()},
            **{f"max_abs_error_{k}": e for k, e in v.max_abs_error.items()},
        )
    return AssetCheckResult(
        check_name=SAMPLE_VALID,
        passed=result.passed,
        severity=AssetCheckSeverity.WARN if only_unverifiable else AssetCheckSeverity.ERROR,
        metadata=md,
    )

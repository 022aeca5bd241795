"""The asset checks: their specs (recorded per partition) and their evaluation through ``npzfix_core.validate``.

They run inside each materialization (a re-check is a cheap re-materialization: done files are skipped),
so every evaluation belongs to the partition and run that produced the files it looks at.
"""

from __future__ import annotations

import warnings

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, MetadataValue, PreviewWarning

from npzfix_core.report import ADOPTED, FAILED, MISSING, SKIPPED_DONE, SKIPPED_LEGACY, UPDATED, RunReport
from npzfix_core.settings import DEFAULT_MAX_PIXELS
from npzfix_core.teacher import LazyTeacher
from npzfix_core.validate import CheckResult, check_edges, check_features, sample
from npzfix_core.verify import Tolerance
from npzfix_dagster.metadata import files_table

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


def edges_sample(
    paths: list[str], kernel_size: int, json_dir: str | None, max_pixels: int = DEFAULT_MAX_PIXELS, rule: str = "method_b"
) -> CheckResult:
    """SAMPLE random files checked, and recomputed exactly from their JSON."""
    return check_edges(sample(paths, SAMPLE), kernel_size, json_dir, max_pixels=max_pixels, rule=rule)


# What a value check recomputes first: what this run left unverified (legacy files it skipped), what it vouched
# for without computing (adopted), what it computed, then what earlier runs did.
VERIFY_ORDER = (SKIPPED_LEGACY, ADOPTED, UPDATED, SKIPPED_DONE)


def verify_picks(report: RunReport, n: int) -> list[str]:
    """``n`` files of the run, taken in turn from each kind of outcome (VERIFY_ORDER) while any is left."""
    queues = [list(report.examples.get(status, ())) for status in VERIFY_ORDER]
    picks: list[str] = []
    while len(picks) < n and any(queues):
        for q in queues:
            if q and len(picks) < n:
                picks.append(q.pop(0))
    return picks


def features_sample(
    paths: list[str],
    teacher: LazyTeacher,
    report: RunReport,
    verify_sample: int,
    tolerance: Tolerance,
    image_dir: str | None = None,
    seed: int = 0,
) -> CheckResult:
    """Structure, flags and provenance of SAMPLE random files; ``verify_sample`` of the run's files (see
    ``verify_picks``) recomputed with the run's teacher and compared within ``tolerance``."""
    picks = verify_picks(report, verify_sample)
    rest = [p for p in sample(paths, max(SAMPLE, verify_sample), seed) if p not in set(picks)]
    picks += rest[: verify_sample - len(picks)]  # a run that saw fewer kinds of files: random ones fill up
    checked = sorted(set(rest[:SAMPLE]) | set(picks))
    return check_features(
        checked,
        teacher,
        needs_flag=True,
        verify=set(picks),
        tolerance=tolerance,
        image_dir=image_dir,
    )

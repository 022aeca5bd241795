"""Which files a partition's checks look at, and how: the sampling rules both front doors' checks follow.

Edges: SAMPLE random files, each recomputed exactly. Features: SAMPLE random files checked for structure, flags
and provenance, and ``verify_sample`` of them recomputed with the run's teacher, taken first from what the run
itself left unverified, vouched for or computed (``verify_picks``), then at random.
"""

from __future__ import annotations

from npzfix_core import edge_rules
from npzfix_core.report import ADOPTED, SKIPPED_DONE, SKIPPED_LEGACY, UPDATED, RunReport
from npzfix_core.settings import DEFAULT_MAX_PIXELS
from npzfix_core.teacher import LazyTeacher
from npzfix_core.checks import CheckResult, check_edges, check_features, sample
from npzfix_core.verify import Tolerance

SAMPLE = 8  # files per partition whose content is checked (edges: recomputed exactly)


def edges_sample(
    paths: list[str],
    kernel_size: int,
    json_dir: str | None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    rule: str = edge_rules.DEFAULT,
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

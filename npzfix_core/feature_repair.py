"""Bulk, sample-list and train/test modes as one function: recompute the features (``outputs``) with the SAM2
teacher, batched and overlapped (``feature_pipeline``), every per-file problem in the report."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from typing import Iterable, Iterator, Union

from npzfix_core import discovery, layouts, store
from npzfix_core.errors import interruption
from npzfix_core.feature_pipeline import FeatureRun
from npzfix_core.progress import Progress
from npzfix_core.report import RunReport
from npzfix_core.requests import BULK, TRAIN_TEST, FeatureRequest
from npzfix_core.teacher import LazyTeacher, Teacher
from npzfix_core.verify import drift_summary

log = logging.getLogger("npzfix")


def items_for(req: FeatureRequest) -> Iterator[discovery.WorkItem]:
    if req.mode == BULK:
        return layouts.bulk_items(req.root, req.recursive)
    if req.mode == TRAIN_TEST:
        return layouts.train_test_items(req.extracted_dirs)
    return layouts.sample_items(req.samples, list(req.npz_dirs))


TeacherSource = Union[Teacher, LazyTeacher, None]


def run_features(req: FeatureRequest, teacher: TeacherSource = None, progress: bool = True) -> RunReport:
    """Recompute features for every item of the request's layout; per-file problems land in the report.

    ``teacher``: a built ``Teacher``; a ``LazyTeacher`` (shared with the checks that follow); or None to build
    one from ``req.teacher`` once some file needs a model (``teacher.build``: the device resolved and leased).
    """
    req.validate()
    lazy = as_lazy(teacher, req)
    prov = lazy.provenance
    report = RunReport(
        f"features ({req.mode})",
        provenance=prov.as_dict(),
        request={k: v for k, v in asdict(req).items() if k != "teacher"},
        dry_run=req.dry_run,
    )
    if prov.random_init:
        report.warnings.append("randomly initialised teacher: not real SAM2 features (demo/test only)")
    bar = Progress(_known_total(req), f"features {req.mode}", enabled=progress)
    items = items_for(req) if req.dry_run else _sweeping(items_for(req))
    pipeline = FeatureRun(req, lazy, report, bar)
    try:
        pipeline.run(items)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP where the caller made them Interrupted
        report.interrupted = interruption(exc)
    finally:
        bar.close()
    report.check_directories([req.root] if req.mode == BULK else list(req.extracted_dirs))
    report.timings = pipeline.timings.summary()
    if pipeline.drift_candidates:
        report.drift = drift_summary(pipeline.drift, pipeline.drift_candidates)
    return report.finish()


def _known_total(req: FeatureRequest) -> int | None:
    """Files a run will see, where one listing tells (one directory, or train/test splits) and so an ETA can be
    given; None for a recursive scan or a sample list (not counted ahead: a million-file tree would wait)."""
    try:
        if req.mode == BULK and not req.recursive:
            return len(discovery.npz_names(req.root))
        if req.mode == TRAIN_TEST:
            return sum(len(discovery.npz_names(d)) for d in req.extracted_dirs)
    except OSError:
        pass
    return None


def as_lazy(teacher: TeacherSource, req: FeatureRequest) -> LazyTeacher:
    if isinstance(teacher, LazyTeacher):
        return teacher
    if isinstance(teacher, Teacher):
        return LazyTeacher(teacher)
    return LazyTeacher(req.teacher, req.settings)


def _sweeping(items: Iterable[discovery.WorkItem]) -> Iterator[discovery.WorkItem]:
    """Pass items through, removing stale temp files of killed writers in each NPZ directory on first sight
    (lazily: a scan of millions of files never waits for a separate sweeping pass)."""
    swept: set[str] = set()
    for item in items:
        d = os.path.dirname(item.npz) if item.npz else None
        if d is not None and d not in swept:
            swept.add(d)
            store.sweep_and_log(d)
        yield item

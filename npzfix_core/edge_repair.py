"""Edges mode: rebuild Method-B edge maps for every NPZ of a directory."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

from npzfix_core import discovery, store
from npzfix_core.provenance import EDGE_KEYS, EdgeProvenance
from npzfix_core.report import (
    FAILED,
    MISSING,
    SKIPPED_DONE,
    UPDATED,
    WOULD_UPDATE,
    Budget,
    Outcome,
    Progress,
    RunReport,
    outcome_for,
)

log = logging.getLogger("npzfix")


@dataclass(frozen=True)
class EdgeRequest:
    npz_dir: str
    json_dir: str | None = None
    kernel_size: int = 3
    max_files: int | None = None
    skip_if_processed: bool = False
    set_flag: bool = True
    order: str = "name"
    glob: str | None = None
    workers: int = 1
    dry_run: bool = False
    durable: bool = True


def process_one(
    npz: str,
    json_path: str | None,
    kernel_size: int,
    skip_if_processed: bool,
    set_flag: bool,
    dry_run: bool,
    durable: bool = True,
) -> Outcome:
    """One file, start to end; every problem becomes an Outcome, never an exception."""
    from npzfix_core.edges import method_b, parse_sa1b  # OpenCV: imported in the worker that needs it

    t0 = time.perf_counter()

    def out(status: str, reason: str = "") -> Outcome:
        return Outcome(npz, status, reason, time.perf_counter() - t0)

    try:
        prov = EdgeProvenance(kernel_size)
        if skip_if_processed and prov.is_done(store.read_flags(npz, EDGE_KEYS)):
            return out(SKIPPED_DONE)
        if json_path is None:
            return out(MISSING, "no JSON found for this NPZ")
        with open(json_path, "rb") as f:
            doc = json.loads(f.read())
        maps = method_b(parse_sa1b(doc), kernel_size)
        if dry_run:
            store.inspect(npz)  # a dry run still reports files that could not be written
            return out(WOULD_UPDATE)
        arrays = {"edge_64x64": maps[64], "edge_32x32": maps[32], "edge_256x256": maps[256]}
        if set_flag:
            arrays.update(prov.arrays())
        # without a flag, the flag and provenance of an earlier run would vouch for edges they did not see
        store.update(npz, arrays, only_if_present={"edge_256x256"}, remove=set(EDGE_KEYS), durable=durable)
        return out(UPDATED)
    except Exception as exc:  # a batch never dies on one file
        return outcome_for(npz, exc, json_path, time.perf_counter() - t0)


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # one core per worker process


def run_bounded(
    items: Iterator[discovery.WorkItem],
    args_of: Callable[[discovery.WorkItem], tuple],
    fn: Callable[..., Outcome],
    report: RunReport,
    workers: int,
    max_updates: int | None,
    progress: Progress,
) -> None:
    """Run ``fn(*args_of(item))`` over items (in ``workers`` processes when > 1) until ``max_updates`` are done.

    Skipped files do not count toward the bound, so repeated bounded runs make progress. A worker process
    that dies (e.g. killed for memory) fails its file, not the run.
    """

    budget = Budget(max_updates)

    def record(outcome: Outcome) -> None:
        report.add(outcome)
        progress.step(report)

    if workers <= 1:
        for item in items:
            if not budget.allows(report, 0):
                report.stopped_early = budget.reason
                return
            record(fn(*args_of(item)))
        return

    pending: dict[Future, str] = {}

    def harvest(done) -> None:
        for f in done:
            path = pending.pop(f)
            try:
                record(f.result())
            except BrokenProcessPool as exc:
                record(Outcome(path, FAILED, f"worker process died: {exc}"))

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
        for item in items:
            while len(pending) >= 2 * workers or (pending and not budget.allows(report, len(pending))):
                harvest(wait(pending, return_when=FIRST_COMPLETED).done)
            if not budget.allows(report, len(pending)):
                report.stopped_early = budget.reason
                break
            try:
                pending[pool.submit(fn, *args_of(item))] = item.npz
            except BrokenProcessPool:
                report.stopped_early = "a worker process died; rerun to finish the remaining files"
                break
        harvest(list(pending))


def run_edges(req: EdgeRequest, progress: bool = True) -> RunReport:
    """Rebuild edges for every feature NPZ of ``req.npz_dir``; returns the report, never raises per file."""
    if req.kernel_size < 1:
        raise ValueError("--kernel-size must be >= 1")
    if not os.path.isdir(req.npz_dir):
        raise FileNotFoundError(f"NPZ directory {req.npz_dir} does not exist")
    report = RunReport(
        "edges", provenance=EdgeProvenance(req.kernel_size).as_dict(), request=asdict(req), dry_run=req.dry_run
    )
    if not req.dry_run:
        for p in store.sweep_stale_temps(req.npz_dir):
            log.warning("removed a temp file left by an interrupted write: %s", p)
    items = discovery.edge_items(req.npz_dir, req.json_dir, req.order, req.glob)
    bar = Progress(len(items), "edges", enabled=progress)
    try:
        run_bounded(
            iter(items),
            lambda it: (
                it.npz,
                it.source,
                req.kernel_size,
                req.skip_if_processed,
                req.set_flag,
                req.dry_run,
                req.durable,
            ),
            process_one,
            report,
            req.workers,
            req.max_files,
            bar,
        )
    finally:
        bar.close()
    return report.finish()

"""Edges mode: rebuild Method-B edge maps for every NPZ of a directory."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, replace
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
from npzfix_core.devices import usable_cpus
from npzfix_core.workers import KillerRegistry, WorkerPool

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
    workers: int = 1  # 0: one per usable CPU (affinity and container limit)
    dry_run: bool = False
    durable: bool = True
    retry_killed: bool = False  # try files that killed a worker process in an earlier run


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
    killers: KillerRegistry | None = None,
) -> None:
    """Run ``fn(*args_of(item))`` over items (in ``workers`` processes when > 1) until ``max_updates`` are done.

    Skipped files do not count toward the bound, so repeated bounded runs make progress. A worker process
    that dies (a segfault, the OOM killer) fails only the file it held, is replaced, and the run goes on;
    the file is remembered in ``killers`` so the next run skips it unless asked to retry.
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

    killers = killers or KillerRegistry()
    sources: dict[str, str | None] = {}

    def harvest(pool: WorkerPool) -> None:
        for path, outcome, died in pool.wait():
            if died is not None:
                killers.remember(path, sources.get(path), died)
                for temp in store.sweep_stale_temps(os.path.dirname(path)):  # what it was writing
                    log.warning("removed the temp file of a dead worker: %s", temp)
                outcome = Outcome(path, FAILED, f"{died} (remembered: the next run skips it unless retried)")
            sources.pop(path, None)
            record(outcome)

    with WorkerPool(workers, fn, initializer=_init_worker) as pool:
        for item in items:
            while pool.busy and (not pool.idle or not budget.allows(report, pool.busy)):
                harvest(pool)
            if not budget.allows(report, pool.busy):
                report.stopped_early = budget.reason
                break
            earlier = killers.killed_before(item.npz, item.source) if item.npz else None
            if earlier:
                record(
                    Outcome(item.npz, FAILED, f"skipped: in an earlier run the {earlier}; retry with --retry-killed")
                )
                continue
            sources[item.npz] = item.source
            pool.submit(item.npz, args_of(item))
        while pool.busy:
            harvest(pool)


def run_edges(req: EdgeRequest, progress: bool = True) -> RunReport:
    """Rebuild edges for every feature NPZ of ``req.npz_dir``; returns the report, never raises per file."""
    if req.kernel_size < 1:
        raise ValueError("--kernel-size must be >= 1")
    if req.workers < 0:
        raise ValueError("--workers must be >= 0 (0: one per usable CPU)")
    if req.workers == 0:
        req = replace(req, workers=usable_cpus())  # the report says how many ran
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
            KillerRegistry(retry=req.retry_killed),
        )
    finally:
        bar.close()
    return report.finish()

"""Edges mode: rebuild the edge maps of a rule (``edge_rules``; Method B by default) for every NPZ of a directory."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from typing import Callable, Iterator

from npzfix_core import discovery, edge_rules, layouts, store
from npzfix_core.errors import interruption
from npzfix_core.outputs import EDGE_SIZES, edge_key
from npzfix_core.provenance import EDGE_KEYS
from npzfix_core.report import (
    FAILED,
    MISSING,
    SKIPPED_DONE,
    UPDATED,
    WOULD_UPDATE,
    Budget,
    Outcome,
    RunReport,
    outcome_for,
)
from npzfix_core.progress import Progress
from npzfix_core.requests import EdgeRequest
from npzfix_core.workers import KillerRegistry, WorkerPool

log = logging.getLogger("npzfix")


def process_one(npz: str, json_path: str | None, req: EdgeRequest) -> Outcome:
    """One file, start to end; every problem becomes an Outcome, never an exception."""
    from npzfix_core.edges import parse_sa1b  # OpenCV: imported in the worker that needs it

    t0 = time.perf_counter()

    def out(status: str, reason: str = "") -> Outcome:
        return Outcome(npz, status, reason, time.perf_counter() - t0)

    try:
        prov = req.provenance()
        if req.skip_if_processed and prov.is_done(store.read_flags(npz, EDGE_KEYS)):
            return out(SKIPPED_DONE)
        if json_path is None:
            return out(MISSING, "no JSON found for this NPZ")
        with open(json_path, "rb") as f:
            doc = json.loads(f.read())
        maps = edge_rules.get(req.rule).maps(parse_sa1b(doc, req.settings.max_pixels), req.kernel_size, EDGE_SIZES)
        if req.dry_run:
            store.inspect(npz)  # a dry run still reports files that could not be written
            return out(WOULD_UPDATE)
        arrays = {edge_key(size): maps[size] for size in EDGE_SIZES}
        # without a flag, the flag and provenance of an earlier run would vouch for edges they did not see
        store.update(
            npz,
            arrays,
            only_if_present={edge_key(EDGE_SIZES[0])},  # edge_256x256: where the file has it, as the original
            remove=set(EDGE_KEYS),
            seal=prov.arrays if req.set_flag else None,
            durable=req.durable,
            lock_timeout_s=req.settings.lock_timeout_s,
        )
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
    killers: KillerRegistry,
) -> None:
    """Run ``fn(*args_of(item))`` over items in ``workers`` processes (one at least: a JSON that crashes OpenCV or
    pycocotools must cost its own file, not the run) until ``max_updates`` are done.

    Skipped files do not count toward the bound, so repeated bounded runs make progress. A worker process
    that dies (a segfault, the OOM killer) fails only the file it held, is replaced, and the run goes on;
    the file is remembered in ``killers`` so the next run skips it unless asked to retry.
    """
    budget = Budget(max_updates)

    def record(outcome: Outcome) -> None:
        report.add(outcome)
        progress.step(report)

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

    with WorkerPool(max(workers, 1), fn, initializer=_init_worker) as pool:
        for item in items:
            while pool.busy and (not pool.idle or not budget.allows(report, pool.busy)):
                harvest(pool)
            if not budget.allows(report, pool.busy):
                budget.stop(report)
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
    req = req.resolved()  # validated; worker_processes=0 made a number (the report says how many ran)
    report = RunReport(
        "edges", provenance=req.provenance().as_dict(), request=asdict(req), dry_run=req.dry_run
    )
    items = layouts.edge_items(
        req.npz_dir,
        req.json_dir,
        req.order,
        req.glob,
        recursive=req.recursive,
        reverse=req.reverse,
        only_mtime_after=req.only_mtime_after,
    )
    if not req.dry_run:
        for directory in sorted({req.npz_dir, *(os.path.dirname(os.path.join(req.npz_dir, n)) for n in items.names)}):
            store.sweep_and_log(directory)
    bar = Progress(len(items), "edges", enabled=progress)
    try:
        run_bounded(
            iter(items),
            lambda it: (it.npz, it.source, req),  # the request travels whole, to worker processes too
            process_one,
            report,
            req.worker_processes,
            req.max_files,
            bar,
            KillerRegistry(req.settings.state_dir, retry=req.retry_killed, read_only=req.dry_run),
        )
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP where the caller made them Interrupted
        report.interrupted = interruption(exc)
    finally:
        bar.close()
    report.check_directories([req.npz_dir])
    return report.finish()

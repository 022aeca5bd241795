"""Tool 4 as a function: rebuild Method-B edge maps for every NPZ of a directory."""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import numpy as np

from npzfix_core import __version__, discovery, store
from npzfix_core.report import FAILED, MISSING, SKIPPED_DONE, UPDATED, WOULD_UPDATE, Outcome, Progress, RunReport

log = logging.getLogger("npzfix")

EDGE_VERSION = "B_v1"
EDGE_KEYS = ("edge_flag", "edge_version", "edge_provenance")
LEGACY_KERNEL = 3  # files flagged by the original tool carry no provenance; it defaulted to 3


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


def provenance(kernel_size: int) -> dict:
    return {
        "rule": "method_b",
        "version": EDGE_VERSION,
        "kernel_size": int(kernel_size),
        "tool": f"npzfix {__version__}",
    }


def is_done(flags: dict[str, np.ndarray], kernel_size: int) -> bool:
    """Flag set and written by this rule with this kernel (legacy B_v1 files count as kernel 3)."""
    if "edge_flag" not in flags or int(flags["edge_flag"]) != 1:
        return False
    if str(flags.get("edge_version", "")) != EDGE_VERSION:
        return False
    if "edge_provenance" not in flags:
        return kernel_size == LEGACY_KERNEL
    try:
        prov = json.loads(str(flags["edge_provenance"]))
    except ValueError:
        return False
    return prov.get("rule") == "method_b" and prov.get("kernel_size") == kernel_size


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
    from npzfix_core.edges import AnnotationError, method_b, parse_sa1b
    from npzfix_core.rle import RleError

    t0 = time.perf_counter()

    def out(status: str, reason: str = "") -> Outcome:
        return Outcome(npz, status, reason, time.perf_counter() - t0)

    try:
        flags = store.read_flags(npz, EDGE_KEYS)
        if skip_if_processed and is_done(flags, kernel_size):
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
            arrays["edge_flag"] = np.array(1, dtype=np.uint8)
            arrays["edge_version"] = np.array(EDGE_VERSION)
            arrays["edge_provenance"] = np.array(json.dumps(provenance(kernel_size), sort_keys=True))
        # without a flag, the flag and provenance of an earlier run would vouch for edges they did not see
        store.update(npz, arrays, only_if_present={"edge_256x256"}, remove=set(EDGE_KEYS), durable=durable)
        return out(UPDATED)
    except store.NpzError as exc:
        return out(FAILED, f"NPZ: {exc}")
    except json.JSONDecodeError as exc:
        return out(FAILED, f"malformed JSON {json_path}: {exc}")
    except (AnnotationError, RleError) as exc:
        return out(FAILED, f"bad annotations in {json_path}: {exc}")
    except FileNotFoundError as exc:
        return out(FAILED, f"file vanished: {exc.filename}")
    except OSError as exc:
        return out(FAILED, f"I/O error: {exc.strerror or exc} ({exc.filename or npz})")
    except Exception as exc:  # a batch never dies on one file
        log.exception("unexpected error on %s", npz)
        return out(FAILED, f"unexpected {type(exc).__name__}: {exc}")


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

    def budget_left(in_flight: int) -> bool:
        return max_updates is None or report.updated + in_flight < max_updates

    def record(outcome: Outcome) -> None:
        report.add(outcome)
        progress.step(report)

    if workers <= 1:
        for item in items:
            if not budget_left(0):
                report.stopped_early = f"--max-files {max_updates} reached"
                return
            record(fn(*args_of(item)))
        return
    import multiprocessing
    from concurrent.futures.process import BrokenProcessPool

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
            while len(pending) >= 2 * workers or (pending and not budget_left(len(pending))):
                harvest(wait(pending, return_when=FIRST_COMPLETED).done)
            if not budget_left(len(pending)):
                report.stopped_early = f"--max-files {max_updates} reached"
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
    report = RunReport("edges", provenance=provenance(req.kernel_size), dry_run=req.dry_run)
    report.provenance["request"] = asdict(req)
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

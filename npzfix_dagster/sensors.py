"""Sensors: find new (or grown) dataset directories, add their partitions, request runs.

A tick stats the directories it already knows and lists only those whose
mtime moved (a new file or subdirectory changes its parent's mtime), so its
cost follows new work, not the millions of files already there. A directory
whose set of NPZ names is unchanged (e.g. our own in-place rewrites) requests
nothing.
"""

import os
import time

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult, SkipReason, sensor

from npzfix_dagster.contracts import DirEntry, SensorCursor
from npzfix_dagster.env import list_budget_s
from npzfix_dagster.jobs import sa1b_job, train_test_job
from npzfix_dagster.partitions import keys_for, sa1b_dirs, train_test_splits
from npzfix_dagster.resources import DatasetRoots
from npzfix_dagster.sources import observation

MAX_RUNS_PER_TICK = 50
# Listing budget of one tick (Dagster cancels an evaluation after 60 s). A fresh SA-1B root (1,000 directories
# of 11,000 files) may not be listed in one tick on a slow file system: what is left is listed by the next.
def _scan(root: str, state: dict[str, DirEntry], budget_s: float | None = None) -> tuple[dict[str, DirEntry], int]:
    """The cursor's directory state brought up to date: only directories whose mtime moved are listed.

    Once ``budget_s``
    is spent, changed directories keep their old entry (or none) and are listed by a later tick; returns
    the state and how many directories were deferred.
    """
    from npzfix_core import discovery

    new_state: dict[str, DirEntry] = {}
    deadline = time.monotonic() + (list_budget_s() if budget_s is None else budget_s)
    deferred = 0

    def children(d: str, st: os.stat_result) -> list[str]:
        nonlocal deferred
        rel = os.path.relpath(d, root)
        old = state.get(rel)
        if old is not None and old.m == st.st_mtime_ns:
            new_state[rel] = old  # unchanged: no listing, descend into the subdirectories seen last time
        elif time.monotonic() > deadline:
            deferred += 1  # its mtime still differs from the cursor's, so a later tick lists it
            if old is None:
                return []
            new_state[rel] = old
        else:
            sub = tuple(os.path.relpath(s, root) for s in discovery.subdirs(d))
            n, digest = discovery.npz_names_signature(d)  # one listing: no NPZ names means no partition
            sig = f"{n}:{digest}" if n else None
            new_state[rel] = DirEntry(st.st_mtime_ns, sub, sig, old.req if old is not None and sig else None)
        return [os.path.join(root, s) for s in new_state[rel].sub]

    for _ in discovery.walk_dirs(root, children):
        pass
    return new_state, deferred


def _tick(context: SensorEvaluationContext, root: str | None, partitions_def, job_name: str):
    if not root or not os.path.isdir(root):
        return SkipReason(f"root {root!r} is not configured or does not exist")
    cursor = SensorCursor.from_json(context.cursor, root)
    t0 = time.monotonic()
    state, deferred = _scan(root, cursor.dirs)
    # new or changed since the last request; a backlog beyond the per-tick cap waits without re-listing
    keys = keys_for([rel for rel, e in state.items() if e.sig], partitions_def.name)
    wanted = sorted((key, rel) for rel, key in keys.items() if state[rel].sig != state[rel].req)
    todo = wanted[:MAX_RUNS_PER_TICK]
    known = set(context.instance.get_dynamic_partitions(partitions_def.name))
    add = [k for k, _ in todo if k not in known]
    runs, observed = [], []
    for key, rel in todo:
        state[rel] = state[rel].requested()
        observed.append(observation(partitions_def.name, key, state[rel].sig))  # the run's input version
        runs.append(
            RunRequest(
                run_key=f"{key}@{state[rel].sig}",
                partition_key=key,
                job_name=job_name,
                tags={"npzfix/trigger": "new files"},
            )
        )
    n_dirs = sum(1 for e in state.values() if e.sig)
    said = (
        f"{len(state)} directories looked at ({n_dirs} hold NPZs) in {time.monotonic() - t0:.1f} s; "
        f"{len(todo)} new or changed requested"
        + (
            f", {len(wanted) - len(todo)} more waiting (cap {MAX_RUNS_PER_TICK} per tick)"
            if len(wanted) > len(todo)
            else ""
        )
        + (f"; listing budget spent, {deferred}+ directories left for the next tick" if deferred else "")
    )
    context.log.info(said)
    return SensorResult(
        run_requests=runs,
        dynamic_partitions_requests=[partitions_def.build_add_request(add)] if add else [],
        asset_events=observed,
        cursor=SensorCursor(root, state).to_json(),
        skip_reason=None if runs else said,
    )


@sensor(
    jobs=[sa1b_job],
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.STOPPED,
    description="Adds a partition for each new SA-1B directory holding NPZs and materializes features and edges.",
)
def sa1b_new_dirs_sensor(context: SensorEvaluationContext, roots: DatasetRoots):
    return _tick(context, roots.sa1b_root, sa1b_dirs, sa1b_job.name)


@sensor(
    jobs=[train_test_job],
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.STOPPED,
    description="Adds a partition for each new <split>/extracted and materializes its features.",
)
def train_test_new_splits_sensor(context: SensorEvaluationContext, roots: DatasetRoots):
    return _tick(context, roots.train_test_root, train_test_splits, train_test_job.name)

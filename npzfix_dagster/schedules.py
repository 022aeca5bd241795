"""Daily re-check: request runs for partitions that have work left, deciding from what the instance knows.

A tick must fit Dagster's 60 s evaluation limit at SA-1B scale (1,000 partitions, 11 M files), so it never
reads every file: per partition it reads the latest materialization of each asset (two queries per asset
for all partitions together), one ``stat`` of the directory, and the flags of a couple of files.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from dagster import AssetKey, RunRequest, ScheduleEvaluationContext, SkipReason, schedule

from npzfix_core.provenance import EdgeProvenance, FeatureProvenance
from npzfix_dagster.contracts import EDGES, FEATURE_ASSETS, SA1B_FEATURES, TRAIN_TEST_FEATURES, Md
from npzfix_dagster.jobs import sa1b_job, train_test_job
from npzfix_dagster.partitions import PartitionKeyError, sa1b_dir, sa1b_dirs, split_extracted_dir, train_test_splits
from npzfix_dagster.env import default_edge_provenance
from npzfix_dagster.resources import DatasetRoots, Sam2Teacher

SAMPLE_FILES = 2  # flag reads per partition: catches files changed behind Dagster's back, at O(1) cost
CHUNK = 500  # storage ids per query


def latest_metadata(instance, asset: str) -> dict[str, dict]:
    """partition -> metadata of its latest materialization (plain values), for every partition at once."""
    from dagster import AssetRecordsFilter, DagsterEventType

    key = AssetKey(asset)
    ids = instance.get_latest_storage_id_by_partition(key, DagsterEventType.ASSET_MATERIALIZATION)
    by_id = {v: k for k, v in ids.items()}
    out: dict[str, dict] = {}
    id_list = sorted(by_id)
    for i in range(0, len(id_list), CHUNK):
        chunk = id_list[i : i + CHUNK]
        records = instance.fetch_materializations(AssetRecordsFilter(key, storage_ids=chunk), limit=len(chunk))
        for r in records.records:
            mat = r.asset_materialization
            out[by_id[r.storage_id]] = {k: v.value for k, v in (mat.metadata or {}).items()}
    return out


@dataclass(frozen=True)
class RecheckReason:
    key: str
    reason: str | None  # None: nothing to do


def _pending_sample(directory: str, features: FeatureProvenance | None, edges: EdgeProvenance | None) -> bool:
    from npzfix_core import discovery
    from npzfix_core.checks import count_pending

    return bool(count_pending(discovery.first_npz(directory, SAMPLE_FILES), features, edges))


def decide(
    key: str,
    directory: str,
    latest: dict[str, dict | None],
    teacher_prov: FeatureProvenance | None,
    edge_prov: EdgeProvenance | None,
) -> RecheckReason:
    """Why this partition needs a run (or None), from its assets' latest metadata and O(1) file reads.

    ``latest`` maps each asset of the job to its latest materialization metadata (None: never);
    ``teacher_prov`` / ``edge_prov``: what the job's features / edges would be written by now (None: the job
    has no such asset). A change of either re-requests the partition, by the same rule as the runners'.
    """
    from npzfix_core import discovery

    for asset, md in sorted(latest.items()):
        if md is None:
            return RecheckReason(key, f"{asset} never materialized")
        if md.get(Md.STOPPED_EARLY):
            return RecheckReason(key, f"{asset}: last run stopped early ({md[Md.STOPPED_EARLY]})")
        if asset in FEATURE_ASSETS and teacher_prov is not None:
            if not teacher_prov.same_teacher(FeatureProvenance.from_dict(md.get(Md.PROVENANCE))):
                return RecheckReason(key, f"{asset}: teacher changed since the last run")
        if asset == EDGES and edge_prov is not None:
            before = EdgeProvenance.from_dict(md.get(Md.PROVENANCE))
            if before != edge_prov:
                change = f"{before.describe() if before else 'unrecorded'} -> {edge_prov.describe()}"
                return RecheckReason(key, f"{asset}: edge rule or kernel changed since the last run ({change})")
    # The NPZ names now: known without a listing when the directory is unchanged since one of the runs ended
    # (the later of two assets' runs usually; each run rewrites files, which moves the directory's mtime).
    mtime = str(os.stat(directory).st_mtime_ns)
    sig = next((md.get(Md.NPZ_SIGNATURE) for md in latest.values() if md.get(Md.DIR_MTIME_NS) == mtime), None)
    sig = sig or discovery.snapshot(directory).signature  # one listing, only for a changed directory
    for asset, md in sorted(latest.items()):
        if sig != md.get(Md.NPZ_SIGNATURE):
            return RecheckReason(key, f"{asset}: NPZ files added or removed since the last run")
    if _pending_sample(directory, teacher_prov, edge_prov):
        return RecheckReason(key, "a sampled file is not done (unflagged, or written by another teacher or kernel)")
    return RecheckReason(key, None)


def recheck(context, partitions_def, job_assets, directory_of, teacher: Sam2Teacher, edge_prov: EdgeProvenance | None):
    """``edge_prov``: the rule and kernel the job's edges are written with now (None: the job has no edges)."""
    t0 = time.monotonic()
    keys = context.instance.get_dynamic_partitions(partitions_def.name)
    latest = {a: latest_metadata(context.instance, a) for a in job_assets}
    teacher_prov = teacher.provenance()
    runs, gone, refused = [], 0, 0
    for key in keys:
        try:
            d = directory_of(key)
        except PartitionKeyError as exc:
            context.log.warning("skipping partition %r: %s", key, exc)
            refused += 1
            continue
        if not os.path.isdir(d):
            gone += 1
            continue
        v = decide(key, d, {a: latest[a].get(key) for a in job_assets}, teacher_prov, edge_prov)
        if v.reason:
            runs.append(
                RunRequest(
                    run_key=None,
                    partition_key=key,
                    tags={"npzfix/trigger": "daily recheck", "npzfix/reason": v.reason[:200]},
                )
            )
    took = time.monotonic() - t0
    extra = (f"; {gone} directories gone" if gone else "") + (f"; {refused} keys refused" if refused else "")
    context.log.info("re-check of %d partitions: %d need a run%s (%.1f s)", len(keys), len(runs), extra, took)
    return runs or SkipReason(f"{len(keys)} partitions checked, every one done{extra} ({took:.1f} s)")


@schedule(job=sa1b_job, cron_schedule="0 3 * * *", description="Re-request SA-1B partitions with work left.")
def sa1b_daily_recheck(context: ScheduleEvaluationContext, roots: DatasetRoots, teacher: Sam2Teacher):
    if not roots.sa1b_root:
        return SkipReason("NPZFIX_SA1B_ROOT is not set")
    return recheck(
        context,
        sa1b_dirs,
        (SA1B_FEATURES, EDGES),
        lambda k: sa1b_dir(roots.sa1b_root, k),
        teacher,
        edge_prov=default_edge_provenance(),  # what the job's edges_B_v1 config defaults to now
    )


@schedule(job=train_test_job, cron_schedule="30 3 * * *", description="Re-request train/test splits with work left.")
def train_test_daily_recheck(context: ScheduleEvaluationContext, roots: DatasetRoots, teacher: Sam2Teacher):
    if not roots.train_test_root:
        return SkipReason("NPZFIX_TRAIN_TEST_ROOT is not set")
    return recheck(
        context,
        train_test_splits,
        (TRAIN_TEST_FEATURES,),
        lambda k: split_extracted_dir(roots.train_test_root, k),
        teacher,
        edge_prov=None,
    )

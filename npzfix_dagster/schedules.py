"""Daily re-check: request runs for partitions whose files are not all flagged done."""

import os

from dagster import RunRequest, ScheduleEvaluationContext, SkipReason, schedule

from npzfix_dagster.jobs import sa1b_job, train_test_job
from npzfix_dagster.partitions import sa1b_dir, sa1b_dirs, split_extracted_dir, train_test_splits
from npzfix_dagster.resources import DatasetRoots


def _pending(context, partitions_def, directory_of, features: bool, edges: bool):
    from npzfix_core import discovery
    from npzfix_core.validate import count_not_done

    runs = []
    for key in context.instance.get_dynamic_partitions(partitions_def.name):
        d = directory_of(key)
        if not os.path.isdir(d):
            context.log.warning("partition %s: directory %s is gone", key, d)
            continue
        if count_not_done(discovery.npz_in_dir(d), features=features, edges=edges, stop_at=1):
            runs.append(RunRequest(run_key=None, partition_key=key, tags={"npzfix/trigger": "daily recheck"}))
    return runs or SkipReason("every partition is done")


@schedule(job=sa1b_job, cron_schedule="0 3 * * *", description="Re-request SA-1B partitions with files not yet done.")
def sa1b_daily_recheck(context: ScheduleEvaluationContext, roots: DatasetRoots):
    if not roots.sa1b_root:
        return SkipReason("NPZFIX_SA1B_ROOT is not set")
    return _pending(context, sa1b_dirs, lambda k: sa1b_dir(roots.sa1b_root, k), True, True)


@schedule(job=train_test_job, cron_schedule="30 3 * * *", description="Re-request train/test splits not yet done.")
def train_test_daily_recheck(context: ScheduleEvaluationContext, roots: DatasetRoots):
    if not roots.train_test_root:
        return SkipReason("NPZFIX_TRAIN_TEST_ROOT is not set")
    return _pending(context, train_test_splits, lambda k: split_extracted_dir(roots.train_test_root, k), True, False)

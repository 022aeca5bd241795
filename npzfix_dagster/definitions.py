"""The one place where assets, jobs, sensors, schedules and resources are wired together.

Loads without torch, sam2 or weights: the teacher is built inside the run that needs it.
"""

from __future__ import annotations


from npzfix_dagster import antlr_compat

antlr_compat.install()  # before anything parses an asset-selection string (e.g. `--select`)

from dagster import Definitions, PipesSubprocessClient, multiprocess_executor  # noqa: E402

from npzfix_dagster.assets import versioned
from npzfix_dagster.jobs import (
    sa1b_edges_job,
    sa1b_job,
    sa1b_shards_job,
    sample_list_job,
    train_test_job,
    train_test_shards_job,
)
from npzfix_dagster.env import (
    check_environment,
    default_edge_provenance,
    execution_from_env,
    max_concurrent_steps,
    pipeline_from_env,
    roots_from_env,
    teacher_from_env,
)
from npzfix_dagster.schedules import sa1b_daily_recheck, train_test_daily_recheck
from npzfix_dagster.shards import sa1b_training_shards, train_test_training_shards
from npzfix_dagster.sensors import sa1b_new_dirs_sensor, train_test_new_splits_sensor
from npzfix_dagster.sources import sa1b_npz_files, train_test_npz_files

# Steps of one run in parallel; GPU steps are further limited across runs by the "gpu" pool.
check_environment()  # a bad NPZFIX_* value stops the load here, named, before any run
MAX_CONCURRENT_STEPS = max_concurrent_steps()

teacher = teacher_from_env()
edges = default_edge_provenance()
defs = Definitions(
    assets=[
        sa1b_npz_files,
        train_test_npz_files,
        *versioned(teacher, edges.kernel_size, edges.rule),
        sa1b_training_shards,
        train_test_training_shards,
    ],
    jobs=[sa1b_job, sa1b_edges_job, sa1b_shards_job, train_test_job, train_test_shards_job, sample_list_job],
    sensors=[sa1b_new_dirs_sensor, train_test_new_splits_sensor],
    schedules=[sa1b_daily_recheck, train_test_daily_recheck],
    resources={
        "roots": roots_from_env(),
        "teacher": teacher,
        "pipeline": pipeline_from_env(),
        "execution": execution_from_env(),
        "pipes_subprocess_client": PipesSubprocessClient(),  # the user's per-shard command
    },
    executor=multiprocess_executor.configured({"max_concurrent": MAX_CONCURRENT_STEPS}),
)

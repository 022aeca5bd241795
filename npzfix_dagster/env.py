"""Every ``NPZFIX_*`` variable the Dagster side reads, in one module: parsed and checked by name when the code
location loads (``check_environment``), so a bad value stops the load instead of a run hours later. The core
reads no environment; ``npzfix_core.settings`` parses the run-time settings both front doors carry.
"""

import math
import os

from npzfix_core import edge_rules
from npzfix_core.provenance import EdgeProvenance
from npzfix_core.settings import Settings
from npzfix_dagster.execution import LOCAL, SLURM, Execution
from npzfix_dagster.resources import DatasetRoots, FeaturePipeline, Sam2Teacher


class SettingError(ValueError):
    """An ``NPZFIX_*`` variable with a value no run could use; the message names it and what it accepts."""


def _env(name: str, cast=str, accepts: str | None = None, ok=None):
    """The variable as ``cast`` (None when unset or empty); refused, by name, when it does not parse or ``ok``
    says no: read when the code location loads, a bad value must stop it there, not spin or mean something
    else in a run."""
    v = os.environ.get(name)
    if v in (None, ""):
        return None
    try:
        value = cast(v)
    except ValueError as exc:
        raise SettingError(f"environment variable {name}={v!r} is not a valid {cast.__name__}{_want(accepts)}") from exc
    if ok is not None and not ok(value):
        raise SettingError(f"environment variable {name}={v!r} is out of range{_want(accepts)}")
    return value


def _want(accepts: str | None) -> str:
    return f": {accepts}" if accepts else ""


def env_int(name: str, minimum: int, accepts: str) -> int | None:
    return _env(name, int, accepts, lambda v: v >= minimum)


def env_seconds(name: str) -> float | None:
    return _env(name, float, "a finite number of seconds > 0", lambda v: math.isfinite(v) and v > 0)


def roots_from_env() -> DatasetRoots:
    return DatasetRoots(
        sa1b_root=_env("NPZFIX_SA1B_ROOT"),
        json_root=_env("NPZFIX_JSON_ROOT"),
        train_test_root=_env("NPZFIX_TRAIN_TEST_ROOT"),
        preview_dir=_env("NPZFIX_PREVIEW_DIR"),
        shards_root=_env("NPZFIX_SHARDS_ROOT"),
    )


def teacher_from_env() -> Sam2Teacher:
    """The teacher of the environment, each variable checked by name: a run must not find out hours later."""
    from npzfix_core import devices
    from npzfix_core.teacher import PRECISIONS

    def accepted_by(parse):
        def ok(v: str) -> bool:
            try:
                parse(v)
            except devices.DeviceError:
                return False
            return True

        return ok

    kw = dict(
        # existence is checked when a features step starts: a code-location server need not mount the weights
        weights=_env("NPZFIX_SAM2_WEIGHTS"),
        config=_env("NPZFIX_SAM2_CONFIG"),
        gpus=_env("NPZFIX_GPUS", str, "GPU numbers >= 0, e.g. 1,2,4,5,6,7, or all", accepted_by(devices.allowed_gpus)),
        resolution=_env("NPZFIX_RESOLUTION", int, "a multiple of 32, at least 64", lambda v: v >= 64 and v % 32 == 0),
        random_init_seed=_env("NPZFIX_RANDOM_INIT_SEED", int, "an integer seed"),
    )
    device = _env("NPZFIX_DEVICE", str, "cpu, cuda, cuda:N or auto", accepted_by(devices.check_device))
    precision = _env("NPZFIX_PRECISION", str, f"one of {', '.join(PRECISIONS)}", lambda v: v in PRECISIONS)
    if kw["weights"] is not None and kw["random_init_seed"] is not None:
        raise SettingError("NPZFIX_SAM2_WEIGHTS and NPZFIX_RANDOM_INIT_SEED are exclusive: set one")
    if device is not None:
        kw["device"] = device
    if precision is not None:
        kw["precision"] = precision
    return Sam2Teacher(**kw)


def execution_from_env() -> Execution:

    mode = _env("NPZFIX_EXECUTION", str.lower, "local or slurm", lambda v: v in (LOCAL, SLURM))
    return Execution(
        mode=mode or LOCAL,
        slurm_partition=_env("NPZFIX_SLURM_PARTITION"),
        slurm_args=_env("NPZFIX_SLURM_ARGS") or "",
        slurm_cpus=env_int("NPZFIX_SLURM_CPUS", 0, "CPUs per job, >= 0 (0: what the step would use)") or 0,
        slurm_dir=_env("NPZFIX_SLURM_DIR"),
        slurm_max_pending_s=env_seconds("NPZFIX_SLURM_MAX_PENDING_S"),
    )


def pipeline_from_env() -> FeaturePipeline:
    kw = {}
    for name, key, what in (
        ("NPZFIX_BATCH_SIZE", "batch_size", "images per encoder call, >= 0 (0: 1 on CPU, 8 on GPU)"),
        ("NPZFIX_DECODE_THREADS", "decode_threads", "threads, >= 0 (0: the host's cores - 1)"),
    ):
        value = env_int(name, 0, what)
        if value is not None:
            kw[key] = value
    return FeaturePipeline(**kw)


def default_edge_rule() -> str:
    """The edge rule a run uses when its config names none (``edge_rules``; Method B unless set)."""
    accepts = f"one of {', '.join(sorted(edge_rules.RULES))}"
    return _env("NPZFIX_EDGE_RULE", str, accepts, lambda v: v in edge_rules.RULES) or edge_rules.DEFAULT


def default_edge_kernel(rule: str | None = None) -> int:
    """The kernel a run uses when its config gives none: the environment's, else the rule's default."""
    value = env_int("NPZFIX_EDGE_KERNEL", 1, "the edge rule's kernel size, >= 1")
    return edge_rules.get(rule or default_edge_rule()).default_kernel if value is None else value


def default_edge_provenance() -> EdgeProvenance:
    """What edges written with the default rule and kernel say (schedules, code versions)."""
    rule = default_edge_rule()
    return EdgeProvenance.of(rule, default_edge_kernel(rule))


EDGE_WORKERS_ENV = "NPZFIX_EDGE_WORKERS"


def default_edge_workers() -> int:
    """Edge worker processes per run: 1 (the original tool's), or what the environment says; 0 means one
    per usable CPU. A Kubernetes edges pod sets it to its CPU request (``k8s.CPU_POD``)."""
    value = env_int(EDGE_WORKERS_ENV, 0, "worker processes, >= 0 (0: one per usable CPU)")
    return 1 if value is None else value


LIST_BUDGET_ENV = "NPZFIX_SENSOR_LIST_BUDGET_S"


def list_budget_s() -> float:
    """Seconds a sensor tick may spend listing directories; read at each tick, not at import: the daemon keeps a
    code location loaded for days."""
    value = env_seconds(LIST_BUDGET_ENV)
    return 30.0 if value is None else value


def max_concurrent_steps() -> int:
    value = env_int("NPZFIX_MAX_CONCURRENT_STEPS", 1, "steps of one run at once, >= 1")
    return 2 if value is None else value


def run_settings() -> Settings:
    """The run-time settings (``npzfix_core.settings``: lock timeout, pixel limit, state and lease directories),
    read when a run builds its request, so a changed value reaches the next run without a reload."""
    return Settings.from_env(os.environ)


def check_environment() -> None:
    """Every ``NPZFIX_*`` value a run would read, checked now (the code location's load): a bad one stops the
    load with its name and what it accepts, before any run could spin, wait forever or silently mean
    something else."""
    roots_from_env()
    teacher_from_env()
    pipeline_from_env()
    execution_from_env()
    default_edge_provenance()
    default_edge_workers()
    max_concurrent_steps()
    list_budget_s()
    try:
        Settings.from_env(os.environ)
    except ValueError as exc:
        raise SettingError(str(exc)) from exc

"""Resources: where the datasets are, and the SAM2 teacher (built once per run, lazily).

Every field can come from the environment (names below), so the same
definitions run on a laptop, in CI and on a GPU cluster:
NPZFIX_SA1B_ROOT, NPZFIX_JSON_ROOT, NPZFIX_TRAIN_TEST_ROOT, NPZFIX_SAM2_WEIGHTS,
NPZFIX_SAM2_CONFIG, NPZFIX_DEVICE, NPZFIX_GPUS, NPZFIX_PRECISION,
NPZFIX_BATCH_SIZE, NPZFIX_DECODE_THREADS, NPZFIX_RESOLUTION, NPZFIX_RANDOM_INIT_SEED, NPZFIX_PREVIEW_DIR;
where steps run: NPZFIX_EXECUTION and NPZFIX_SLURM_* (``npzfix_dagster.execution``).
"""

import os
from typing import Optional

from dagster import ConfigurableResource


def dagster_home() -> str:
    """Where the instance keeps its files, and npzfix its reports, previews and Slurm step files by default."""
    return os.environ.get("DAGSTER_HOME") or os.path.expanduser("~/.dagster")


class DatasetRoots(ConfigurableResource):
    """Where the caches live. Partition keys are paths relative to these roots."""

    sa1b_root: Optional[str] = None
    json_root: Optional[str] = None  # default: <stem>.json beside the NPZ dir's parent (the SA-1B layout)
    train_test_root: Optional[str] = None
    preview_dir: Optional[str] = None  # default: $DAGSTER_HOME/npzfix_previews
    shards_root: Optional[str] = None  # training shards, <root>/<sa1b|train_test>/<partition>; default $DAGSTER_HOME

    def require(self, which: str) -> str:
        value = getattr(self, which)
        if not value:
            raise ValueError(f"{which} is not configured: set NPZFIX_{which.upper()} or the resource config")
        return value

    def json_dir_for(self, directory: str) -> Optional[str]:
        """``<json_root>/<shard>`` for ``<sa1b_root>/<shard>/extracted`` (SA-1B keeps each shard's JSON in
        the shard); None (beside the NPZ dir's parent) without a JSON root."""
        if not self.json_root:
            return None
        rel = os.path.relpath(os.path.dirname(directory), self.require("sa1b_root"))
        return os.path.normpath(os.path.join(self.json_root, rel))

    def shards(self, group: str, key: str) -> str:
        """A partition's shard directory (the key is a checked relative path, as for the caches)."""
        root = self.shards_root or os.path.join(dagster_home(), "npzfix_shards")
        return os.path.join(root, group, key)

    def previews(self) -> str:
        if self.preview_dir:
            return self.preview_dir
        return os.path.join(dagster_home(), "npzfix_previews")


class Sam2Teacher(ConfigurableResource):
    """The SAM2 image encoder. Weights from ``weights`` (config from the name, or ``config``);
    ``random_init_seed`` builds a seeded random model for demos and tests (labelled as such everywhere).
    The model is built where the step runs (``steps.FeatureStep``), on the device resolved and leased there."""

    weights: Optional[str] = None
    config: Optional[str] = None
    device: str = "auto"
    gpus: Optional[str] = None
    precision: str = "fp32"
    resolution: Optional[int] = None
    random_init_seed: Optional[int] = None

    def spec(self, device: str = "cpu"):
        """The teacher as the core describes it; the device is resolved (and leased) where the step runs."""
        from npzfix_core.teacher import TeacherSpec

        return TeacherSpec.from_attrs(self, device)

    def provenance(self):
        """What identifies the features this teacher writes (FeatureProvenance); no model, no torch."""
        from npzfix_core.teacher import provenance

        return provenance(self.spec())


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
    import math

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


class FeaturePipeline(ConfigurableResource):
    """How images are fed to the teacher. Not part of the teacher: no provenance or code version depends on it
    (a batch of 8 writes the same features as a batch of 1)."""

    batch_size: int = 0  # 0: 1 on CPU, 8 on GPU
    decode_threads: int = 0  # 0: the host's cores - 1 (2..16)


def execution_from_env():
    from npzfix_dagster.execution import LOCAL, SLURM, Execution

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


def features_code_version(teacher: Sam2Teacher, store_dtype: str = "keep") -> str:
    """What defines a feature asset's output: teacher config, weights, precision, resolution, storage dtype.

    Read at definitions load, so it must be cheap: weights are identified by name, size and mtime (the
    files themselves record the sha256). A change shows every partition as "code version changed".
    """
    spec = teacher.spec()  # the same spec the run's provenance and model come from
    try:
        config = spec.resolved_config()
    except ValueError:
        config = spec.config or "?"
    if spec.weights:
        try:
            st = os.stat(spec.weights)
            weights = f"{os.path.basename(spec.weights)}:{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            weights = f"{spec.weights}:missing"
    else:
        weights = f"random-init:{spec.random_init_seed}"
    return f"sam2|{config}|{weights}|{spec.precision}|{spec.input_size}|{store_dtype}"


def edges_code_version(kernel_size: int) -> str:
    """What defines the edges asset's output: the rule, its version and the kernel size."""
    from npzfix_core.provenance import EDGE_RULE, EDGE_VERSION

    return f"{EDGE_RULE}|{EDGE_VERSION}|k{kernel_size}"


def default_edge_kernel() -> int:
    value = env_int("NPZFIX_EDGE_KERNEL", 1, "the Method-B kernel size, >= 1")
    return 3 if value is None else value


EDGE_WORKERS_ENV = "NPZFIX_EDGE_WORKERS"


def default_edge_workers() -> int:
    """Edge worker processes per run: 1 (the original tool's), or what the environment says; 0 means one
    per usable CPU. A Kubernetes edges pod sets it to its CPU request (``k8s.CPU_POD``)."""
    value = env_int(EDGE_WORKERS_ENV, 0, "worker processes, >= 0 (0: one per usable CPU)")
    return 1 if value is None else value


def max_concurrent_steps() -> int:
    value = env_int("NPZFIX_MAX_CONCURRENT_STEPS", 1, "steps of one run at once, >= 1")
    return 2 if value is None else value


def check_environment() -> None:
    """Every ``NPZFIX_*`` value a run would read, checked now (the code location's load): a bad one stops the
    load with its name and what it accepts, before any run could spin, wait forever or silently mean
    something else."""
    from npzfix_core.settings import Settings
    from npzfix_dagster.sensors import list_budget_s

    roots_from_env()
    teacher_from_env()
    pipeline_from_env()
    execution_from_env()
    default_edge_kernel()
    default_edge_workers()
    max_concurrent_steps()
    list_budget_s()
    try:
        Settings.from_env(os.environ)
    except ValueError as exc:
        raise SettingError(str(exc)) from exc

"""What a run is asked to do: one frozen request per mode, the single source of its fields, defaults and checks.

The CLI builds a request with ``from_args`` (argparse dests are the field names; the few that are not, such
as ``set_flag`` from ``--no-edge-flag``, are passed explicitly); Dagster builds the same type from run config
plus resources (``npzfix_dagster.config``), and a test holds the Dagster ``Config`` classes to these fields and
defaults. A new flag is a field here, plus its
argparse line and its ``Config`` line. Requests travel whole, to worker processes too (they pickle).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

from npzfix_core import adoption, edge_rules
from npzfix_core.devices import usable_cpus
from npzfix_core.settings import Settings
from npzfix_core.teacher import TeacherSpec
from npzfix_core.verify import Tolerance

BULK, SAMPLES, TRAIN_TEST = "bulk", "samples", "train_test"  # root scan | image list | <split>/extracted dirs
MODES = (BULK, SAMPLES, TRAIN_TEST)
STORE_DTYPES = ("keep", "float32", "float16")
EDGE_ORDERS = ("name", "mtime")


def default_decode_threads() -> int:
    """A GPU wants an image every few ms and a 1500x2250 JPEG takes ~20 ms of a core, so use the CPUs this
    process may use (a container's limit, not the node's core count), one left to the main loop."""
    return max(2, min(usable_cpus() - 1, 16))


@dataclass(frozen=True)
class EdgeRequest:
    npz_dir: str
    json_dir: str | None = None
    kernel_size: int | None = None  # None: the rule's default kernel (3 for Method B, the original's)
    rule: str = edge_rules.DEFAULT  # an entry of ``edge_rules.RULES``
    max_files: int | None = None  # None or 0: no limit
    skip_if_processed: bool = True  # the original tool's default (--no-skip-if-processed)
    set_flag: bool = True  # the original tool's default (--no-set-edge-flag)
    order: str = "mtime"  # the original's --sort-by default; Dagster's is name (see DAGSTER_DEFAULTS)
    reverse: bool = False
    only_mtime_after: float | None = None  # epoch seconds: only files modified later
    recursive: bool = True  # the original scans --npz-dir recursively; a Dagster partition is one directory
    glob: str | None = None
    worker_processes: int = 1  # 0: one per usable CPU (affinity and container limit)
    dry_run: bool = False
    durable: bool = True
    retry_killed: bool = False  # try files that killed a worker process in an earlier run
    settings: Settings = field(default_factory=Settings)  # from the environment, read by the caller

    def __post_init__(self) -> None:
        if self.kernel_size is None and self.rule in edge_rules.RULES:
            object.__setattr__(self, "kernel_size", edge_rules.get(self.rule).default_kernel)

    def provenance(self):
        """What this run's files will say wrote their edges (rule, version, kernel)."""
        from npzfix_core.provenance import EdgeProvenance

        return EdgeProvenance.of(self.rule, self.kernel_size)

    def validate(self) -> None:
        edge_rules.get(self.rule)  # UnknownRule (a ValueError) names the rules there are
        if self.kernel_size < 1:
            raise ValueError("--kernel-size must be >= 1")
        if self.worker_processes < 0:
            raise ValueError("--worker-processes must be >= 0 (0: one per usable CPU)")
        if self.max_files is not None and self.max_files < 0:
            raise ValueError("--max-files must be >= 0")
        if self.order not in EDGE_ORDERS:
            raise ValueError(f"--sort-by must be one of {EDGE_ORDERS}")
        if self.only_mtime_after is not None and not math.isfinite(self.only_mtime_after):
            raise ValueError("--only-mtime-after must be a finite number of seconds since the epoch")
        self.settings.validate()
        if not os.path.isdir(self.npz_dir):
            raise FileNotFoundError(f"NPZ directory {self.npz_dir} does not exist")
        # a json_dir that does not exist is not refused here: each file then reports its JSON missing (Dagster
        # records them); the CLI refuses it up front, as the original tool did

    def resolved(self) -> EdgeRequest:
        """Validated, with ``worker_processes=0`` made a number (the report says how many ran)."""
        self.validate()
        return replace(self, worker_processes=usable_cpus()) if self.worker_processes == 0 else self

    @classmethod
    def from_args(cls, args: Any, settings: Settings) -> EdgeRequest:
        return cls(**_from_args(cls, args, {"settings": settings}))


@dataclass(frozen=True)
class FeatureRequest:
    mode: str  # one of MODES
    teacher: TeacherSpec = field(default_factory=TeacherSpec)
    root: str | None = None
    recursive: bool = True  # bulk: the whole tree under root, or only root's own files (a Dagster partition)
    samples: str | None = None
    npz_dirs: tuple[str, ...] = ()
    extracted_dirs: tuple[str, ...] = ()
    max_files: int | None = None
    batch_size: int = 0  # 0: auto, 1 on the CPU (batching only adds cache pressure there), 8 on a GPU
    decode_threads: int = field(default_factory=default_decode_threads)
    writers: int = 4  # writer threads
    store_dtype: str = "keep"
    force: bool = False
    dry_run: bool = False
    durable: bool = True
    preprocess_on: str = "auto"  # auto: decode threads on a CPU teacher, the device (batched) on a GPU
    legacy: str = adoption.SKIP  # files flagged by the original tool: skip | verify (then adopt or redo) | redo
    legacy_sample: int = 4  # legacy files recomputed per directory before adopting the rest
    drift_sample: int = 8  # files redone for another teacher whose old features are compared with the new
    tolerance: Tolerance = field(default_factory=Tolerance)
    settings: Settings = field(default_factory=Settings)  # from the environment, read by the caller

    @property
    def sets_flag(self) -> bool:
        return self.mode != SAMPLES

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        if self.preprocess_on not in ("auto", "device", "workers"):
            raise ValueError("preprocess_on must be auto, device or workers")
        if self.store_dtype not in STORE_DTYPES:
            raise ValueError(f"--store-dtype must be one of {STORE_DTYPES}")
        if self.batch_size < 0 or self.decode_threads < 1 or self.writers < 1:
            raise ValueError("--batch-size must be >= 0 (0: auto), --decode-threads and --writers >= 1")
        if self.max_files is not None and self.max_files < 0:
            raise ValueError("--max-files must be >= 0")
        if self.legacy not in adoption.POLICIES:
            raise ValueError(f"--legacy must be one of {adoption.POLICIES}")
        if self.legacy != adoption.SKIP and not self.sets_flag:
            raise ValueError("--legacy goes with --root or --extracted-dirs: a sample list redoes every file anyway")
        if self.legacy_sample < 1 or self.drift_sample < 0:
            raise ValueError("--legacy-sample must be >= 1 and --drift-sample >= 0")
        self.tolerance.validate()
        self.settings.validate()
        given, flag = {
            BULK: (self.root, "--root"),
            SAMPLES: (self.samples, "--samples"),
            TRAIN_TEST: (self.extracted_dirs, "--extracted-dirs"),
        }[self.mode]
        if not given:
            raise ValueError(f"mode {self.mode} needs {flag}")
        for d in {BULK: [self.root], TRAIN_TEST: list(self.extracted_dirs)}.get(self.mode, []):
            if not os.path.isdir(d):
                raise FileNotFoundError(f"directory {d} does not exist")
        if self.mode == SAMPLES and not os.path.isfile(self.samples):
            raise FileNotFoundError(f"sample list {self.samples} does not exist")

    @classmethod
    def from_args(cls, args: Any, mode: str, teacher: TeacherSpec, settings: Settings) -> FeatureRequest:
        """From ``npzfix features`` arguments; ``teacher`` from the shared teacher flags (``teacher_spec``)."""
        csv = lambda v: tuple(x.strip() for x in (v or "").split(",") if x.strip())  # noqa: E731
        given = {
            "mode": mode,
            "teacher": teacher,
            "npz_dirs": csv(args.npz_dirs),
            "extracted_dirs": csv(args.extracted_dirs),
            "max_files": args.max_files if args.max_files is not None else args.max_images,
            "decode_threads": args.decode_threads or default_decode_threads(),
            "tolerance": tolerance_from_args(args),
            "settings": settings,
        }
        return cls(**_from_args(cls, args, given))


# The original feature tools' --weights default, relative to the working directory they were run from.
ORIGINAL_WEIGHTS = os.path.join("weights", "sam2.1_hiera_base_plus.pt")


def teacher_spec_from_args(args: Any) -> TeacherSpec:
    """The teacher named by the shared teacher flags (``features`` and ``check features``), device and GPUs as
    asked, validated; with neither ``--weights`` nor ``--random-init``, the originals' default checkpoint."""
    if args.weights is None and args.random_init_seed is None:
        args = replace_namespace(args, weights=ORIGINAL_WEIGHTS)
    spec = TeacherSpec.from_attrs(args)
    spec.validate()
    return spec


def replace_namespace(args: Any, **changes: Any) -> Any:
    """A copy of parsed arguments with ``changes`` (the caller's namespace stays as parsed)."""
    import argparse

    return argparse.Namespace(**{**vars(args), **changes})


def tolerance_from_args(args: Any) -> Tolerance:
    tol = Tolerance(args.min_cosine, args.max_rel_error)
    tol.validate()
    return tol


def _from_args(cls, args: Any, given: Mapping[str, Any]) -> dict[str, Any]:
    """Every field of ``cls`` that argparse holds under the field's own name, plus ``given``; the rest keep
    the request's defaults."""
    out = dict(given)
    for f in fields(cls):
        if f.name not in out and hasattr(args, f.name):
            out[f.name] = getattr(args, f.name)
    return out

"""One Dagster step's work as plain data: the same code in the step's own process (``NPZFIX_EXECUTION=local``)
and in a Slurm job (``slurm``).

An asset body builds a step (the core request plus what its check needs) and hands it to the ``execution``
resource, which runs ``step.run()`` here or in a job; ``results.materialization`` turns the outcome into metadata and
check results, here or in the job (then reported through Dagster Pipes). Steps pickle: they travel whole.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from typing import Optional, Union

from npzfix_core.report import RunReport
from npzfix_core.requests import SAMPLES, EdgeRequest, FeatureRequest
from npzfix_core.checks import CheckResult

DEFAULT_JOB_CPUS = 8  # per Slurm job when nothing says: a GPU wants ~8 decode threads at SA-1B sizes


@dataclass(frozen=True)
class Place:
    """Where a step's outputs are filed: the asset (or op), partition and run, and the preview directory."""

    asset: str
    partition: Optional[str]
    run_id: str
    previews: str

    @classmethod
    def of(cls, context, previews: str) -> Place:
        asset = context.asset_key.to_user_string() if context.has_assets_def else context.op.name
        return cls(asset, context.partition_key if context.has_partition_key else None, context.run.run_id, previews)

    def base(self) -> str:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "__", self.partition or "run")
        return os.path.join(self.previews, self.asset, f"{safe}.{self.run_id[:8]}")

    def job_name(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"npzfix-{self.asset}-{self.partition or self.run_id[:8]}")[:120]


@dataclass
class StepOutcome:
    """What a step did: the core report, and its sample check's core result (None for the sample-list op)."""

    report: RunReport
    sample: Optional[CheckResult] = None
    paths: list = field(default_factory=list)  # the directory's NPZ files as the run left them (listed once)
    facts: dict = field(default_factory=dict)  # where it ran (Slurm job id, node, GPUs): metadata as is


@dataclass(frozen=True)
class FeatureStep:
    request: FeatureRequest  # its teacher holds the device and GPUs as asked: resolved and leased where it runs
    verify_sample: int = 2
    image_dir: Optional[str] = None
    seed: int = 0

    @property
    def device(self) -> str:
        return self.request.teacher.device

    @property
    def gpus(self) -> Optional[str]:
        return self.request.teacher.gpus

    @property
    def gpu(self) -> bool:
        return self.device != "cpu"

    def in_allocation(self, cpus: int) -> FeatureStep:
        """Inside a Slurm allocation: decode threads to fit its ``cpus`` (one core left to the main loop, all
        when 0: unknown), and no GPU allowlist — the allocation is the allowlist. A shared server's
        ``NPZFIX_GPUS=1,2,4`` names host GPUs; inside a job the GPU Slurm gave is ``cuda:0``, and holding it to
        the host's list would refuse it (or, under ``auto``, silently use the CPU)."""
        req = replace(self.request, decode_threads=max(1, cpus - 1)) if cpus else self.request
        return replace(self, request=replace(req, teacher=replace(req.teacher, gpus=None)))

    def run(self) -> StepOutcome:
        from npzfix_core.feature_repair import run_features
        from npzfix_core.teacher import LazyTeacher, TeacherError

        req = self.request
        settings = req.settings
        try:  # the teacher's settings, before any file is read: a missing checkpoint is not found hours later
            req.teacher.validate()
        except TeacherError as exc:
            from dagster import Failure

            where = "resource teacher / NPZFIX_SAM2_WEIGHTS, NPZFIX_RANDOM_INIT_SEED"
            raise Failure(description=f"teacher: {exc} ({where})")

        # one teacher for the run and its check: built (and the GPU leased) only if a file or the check needs it
        lazy = LazyTeacher(req.teacher, settings)
        report = vanished_fails(run_features(req, teacher=lazy, progress=True))
        if req.mode == SAMPLES:
            return StepOutcome(report)
        from npzfix_core import discovery, sampling

        paths = discovery.npz_in_dir(directory_of(self))
        sample = sampling.features_sample(
            paths, lazy, report, self.verify_sample, req.tolerance, self.image_dir, self.seed
        )
        return StepOutcome(report, sample, paths)


@dataclass(frozen=True)
class EdgeStep:
    request: EdgeRequest
    gpu: bool = False  # CPUs only

    def in_allocation(self, cpus: int) -> EdgeStep:
        """Inside a Slurm allocation: one worker process per allocated CPU (as asked, when 0: unknown)."""
        return replace(self, request=replace(self.request, worker_processes=cpus)) if cpus else self

    def run(self) -> StepOutcome:
        from npzfix_core import discovery, sampling
        from npzfix_core.edge_repair import run_edges

        req = self.request
        report = vanished_fails(run_edges(req, progress=True))
        paths = discovery.npz_in_dir(req.npz_dir, req.glob)
        sample = sampling.edges_sample(paths, req.kernel_size, req.json_dir, req.settings.max_pixels, req.rule)
        return StepOutcome(report, sample, paths)


Step = Union[FeatureStep, EdgeStep]


def vanished_fails(report):
    """A partition whose directory went away mid-run did not do its work: the step fails, saying so (here or in
    the Slurm job), rather than record a materialization."""
    if report.vanished:
        from dagster import Failure, MetadataValue

        raise Failure(
            description=report.vanished,
            metadata={"summary": MetadataValue.text(report.summary()), "missing_source": report.counts["missing_source"]},
        )
    return report


def directory_of(step: Step) -> str:
    """A partition step's directory."""
    req = step.request
    return req.npz_dir if isinstance(req, EdgeRequest) else (req.root or req.extracted_dirs[0])


def job_cpus(step: Step, configured: int) -> int:
    """CPUs a Slurm job of this step asks for: the execution's setting, else what the step would use."""
    if configured > 0:
        return configured
    if isinstance(step, EdgeStep):
        return step.request.worker_processes or DEFAULT_JOB_CPUS
    return DEFAULT_JOB_CPUS

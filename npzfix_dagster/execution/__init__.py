"""Where a step's work runs: in the step's own process (``local``, the default) or as one Slurm job per step
(``slurm``). Either way the same step runs and the UI shows the same metadata and checks; a Slurm step adds
``slurm_job_id`` (and the node, GPUs and CPUs the job was given).

Environment: NPZFIX_EXECUTION (local | slurm), NPZFIX_SLURM_PARTITION, NPZFIX_SLURM_ARGS (extra sbatch
arguments), NPZFIX_SLURM_CPUS (per job; default: what the step would use), NPZFIX_SLURM_DIR (shared by the
compute nodes; default $DAGSTER_HOME/npzfix_slurm).
"""

from __future__ import annotations

import os
from typing import Optional

from dagster import ConfigurableResource, DataVersion, Failure, MaterializeResult, MetadataValue
from pydantic import Field

from npzfix_core.discovery import DirSnapshot
from npzfix_dagster.execution import results, steps

LOCAL, SLURM = "local", "slurm"
NOTHING_REPORTED = (
    "completed but reported nothing through Dagster Pipes: did it get the step's environment? "
    "(sbatch's default --export=ALL; NPZFIX_SLURM_ARGS must not say --export=NONE)"
)


class Execution(ConfigurableResource):
    """Where partition steps run; only the place changes, never what runs."""

    mode: str = Field(LOCAL, description="local: in the step's process; slurm: one Slurm job per step")
    slurm_partition: Optional[str] = None
    slurm_args: str = Field("", description="extra sbatch arguments (account, --time, --constraint ...)")
    slurm_cpus: int = Field(0, description="CPUs per job; 0: the step's decode threads / worker processes")
    slurm_dir: Optional[str] = Field(
        None, description="shared by the compute nodes; default $DAGSTER_HOME/npzfix_slurm"
    )
    slurm_max_pending_s: Optional[float] = Field(
        None, description="cancel a job queued longer than this, whatever the reason (default: no bound)"
    )

    def _slurm(self):
        from npzfix_dagster.home import dagster_home
        from npzfix_dagster.execution.slurm import SlurmSettings

        work = self.slurm_dir or os.path.join(dagster_home(), "npzfix_slurm")
        return SlurmSettings(
            self.slurm_partition, self.slurm_args, self.slurm_cpus, work, max_pending_s=self.slurm_max_pending_s
        )

    def check(self) -> None:
        if self.mode not in (LOCAL, SLURM):
            raise Failure(description=f"execution mode {self.mode!r}: use local or slurm (NPZFIX_EXECUTION)")

    def materialize(
        self, context, step: steps.Step, place: steps.Place, seen_dir: Optional[DirSnapshot]
    ) -> MaterializeResult:
        """The step's materialization with both checks, run here or as a Slurm job."""
        self.check()
        if self.mode == LOCAL:
            outcome = step.run()
            context.log.info(outcome.report.summary())
            md, checks, version = results.materialization(place, step, seen_dir, outcome)
            return MaterializeResult(metadata=md, check_results=checks, data_version=DataVersion(version))
        from dagster import AssetCheckResult

        from npzfix_dagster.execution import slurm

        s = self._slurm()
        payload = {"step": step, "place": place, "seen_dir": seen_dir}
        job = slurm.run(context, payload, place.job_name(), steps.job_cpus(step, s.cpus), step.gpu, s)
        reported = job.session.get_results(implicit_materializations=False, metadata={"slurm_job_id": job.id})
        mats = [r for r in reported if isinstance(r, MaterializeResult)]
        if not mats:
            raise job.failure(NOTHING_REPORTED)
        checks = [r for r in reported if isinstance(r, AssetCheckResult)]
        return MaterializeResult(metadata=mats[0].metadata, check_results=checks, data_version=mats[0].data_version)

    def run_op(self, context, step: steps.FeatureStep, report_path: Optional[str], samples: str) -> tuple[dict, int]:
        """The sample-list op's (metadata, failed files), run here or as a Slurm job."""
        self.check()
        if self.mode == LOCAL:
            from npzfix_dagster import metadata

            report = step.run().report
            context.log.info(report.summary())
            path = report.write(report_path)[0] if report_path else None
            return metadata.report_metadata(report, samples, path), report.failed
        from npzfix_dagster.execution import slurm
        from npzfix_dagster.execution.pipes import from_pipes

        s = self._slurm()
        place = steps.Place.of(context, s.work_dir)
        payload = {"step": step, "place": place, "op": True, "op_report": report_path}
        job = slurm.run(context, payload, place.job_name(), steps.job_cpus(step, s.cpus), step.gpu, s)
        messages = [m for m in job.session.get_custom_messages() if isinstance(m, dict) and "metadata" in m]
        if not messages:
            raise job.failure(NOTHING_REPORTED)
        md = {**from_pipes(messages[-1]["metadata"]), "slurm_job_id": MetadataValue.text(job.id)}
        return md, int(messages[-1]["failed"])

"""What a Slurm job of a step runs: ``python -m npzfix_dagster.execution.slurm_job WORKDIR``.

Loads the step its Dagster step wrote, sizes it to the allocation (``SLURM_CPUS_PER_TASK``; the GPU is the
one in ``CUDA_VISIBLE_DEVICES``, which the device policy leases by that name), runs it, and reports through
Dagster Pipes what a local step would have returned: npzfix's log lines, the materialization metadata and
both checks (assets), or the op's metadata (the sample-list job).
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import sys
import time

from dagster_pipes import open_dagster_pipes

from npzfix_dagster.execution import results
from npzfix_dagster.execution.pipes import to_pipes


class _ToPipes(logging.Handler):
    """npzfix's log lines into the run's event log, as ``managed_python_loggers`` does for a local step."""

    def __init__(self, pipes_log):
        super().__init__(logging.INFO)
        self.pipes_log = pipes_log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.pipes_log.log(record.levelno, self.format(record))
        except Exception:  # a log line never fails the job
            pass


def facts(t0: float, cpus: int) -> dict:
    return {
        "slurm_node": socket.gethostname(),
        "slurm_cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        "slurm_cpus": cpus,
        "slurm_started_at": round(t0, 3),
        "slurm_ended_at": round(time.time(), 3),
    }


def main(work: str) -> int:
    t0 = time.time()
    with open(os.path.join(work, "step.pkl"), "rb") as f:
        payload = pickle.load(f)
    step, place = payload["step"], payload["place"]
    with open_dagster_pipes() as pipes:
        log = logging.getLogger("npzfix")
        log.setLevel(logging.INFO)
        log.addHandler(_ToPipes(pipes.log))
        cpus = int(os.environ.get("SLURM_CPUS_PER_TASK") or 0)
        step = step.in_allocation(cpus)
        pipes.log.info(
            f"slurm job {os.environ.get('SLURM_JOB_ID')} on {socket.gethostname()}: "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')!r}, {cpus or '?'} CPU(s)"
        )
        outcome = step.run()
        outcome.facts.update(facts(t0, cpus))
        report = outcome.report
        pipes.log.info(report.summary())
        if payload.get("op"):  # the sample-list op: no asset to materialize, its metadata as a message
            from npzfix_dagster import metadata

            path = report.write(payload["op_report"])[0] if payload.get("op_report") else None
            md = {**metadata.report_metadata(report, step.request.samples, path), **outcome.facts}
            pipes.report_custom_message({"metadata": to_pipes(md), "failed": report.failed})
            return 0
        md, checks, version = results.materialization(place, step, payload["seen_dir"], outcome)
        pipes.report_asset_materialization(metadata=to_pipes(md), data_version=version)
        for c in checks:
            pipes.report_asset_check(
                check_name=c.check_name, passed=c.passed, severity=c.severity.value, metadata=to_pipes(c.metadata)
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

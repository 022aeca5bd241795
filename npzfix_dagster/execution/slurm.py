"""A step's work as one Slurm job, followed through Dagster Pipes on the shared file system.

The step process writes the step (pickled) and a batch script into a work directory that compute nodes see,
opens a Pipes session whose context and message channel are files there, submits with ``sbatch``, and
follows the job with ``scontrol`` (``sacct`` once the controller has forgotten it) until it ends. The job
(``npzfix_dagster.execution.slurm_job``) runs the same step and reports logs, the materialization and its checks back
through Pipes. Terminating the run cancels the job; a job that does not complete fails the step with its id,
state and the tail of its log.
"""

from __future__ import annotations

import os
import pickle
import re
import shlex
import sys
import time
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from dagster import (
    Failure,
    MetadataValue,
    PipesFileContextInjector,
    PipesFileMessageReader,
    open_pipes_session,
)

from npzfix_dagster.execution.pipes import quiet_pipes  # noqa: F401 (used below; also the shards' Pipes)
from npzfix_dagster.execution.slurm_cli import (  # noqa: F401 (module globals here, so tests can stand in for them)
    SlurmError,
    SlurmSettings,
    _gpus_of,
    cancel,
    job_record,
    submit,
    tail,
    too_big,
)

# Slurm's job states (squeue(1)): which mean "not yet", "under way", and the end (only COMPLETED is success).
WAITING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED", "STOPPED"}
UNDER_WAY = {"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT"}
COMPLETED = "COMPLETED"
# Ends a resubmission cures (the node or the allocation went away, not the step): Dagster retries the step.
RETRYABLE = {"PREEMPTED", "NODE_FAIL", "BOOT_FAIL"}
MAX_RETRIES = 3
RETRY_WAIT_S = 10
# Pending reasons that waiting cannot cure (squeue(1), "JOB REASON CODES"): the job is cancelled and the step
# fails at once, saying what was asked and which setting to change.
HOPELESS = {
    "PartitionConfig", "BadConstraints", "PartitionNodeLimit", "PartitionTimeLimit", "DependencyNeverSatisfied",
    "InvalidAccount", "InvalidQOS", "AccountNotAllowed", "QOSNotAllowed", "PartitionNotAllowed",
}  # fmt: skip
# Per-job QOS / association limits (QOSMaxCpuPerJobLimit, AssocMaxWallDurationPerJobLimit, QOSMinGRES ...):
# a job over them never starts, unlike the group limits (AssocGrp*) that free up as other jobs end.
HOPELESS_LIMIT = re.compile(r"^(QOS|Assoc)(Max\w*Per(Job|Node)\w*|Min\w+)$")
# Reasons that may clear (a node back from maintenance) but not by themselves soon: failed after a grace period.
STUCK = {"ReqNodeNotAvail", "PartitionDown", "PartitionInactive", "NodeDown", "JobHeldAdmin", "JobHeldUser"}
STUCK_GRACE_S = 300.0
PENDING_LOG_S = 300.0  # a curable wait is said again at this pace, with its reason and how long so far
MAX_POLL_S = 15.0


CONTROLLER_PATIENCE_S = 300.0  # a controller restart or failover takes seconds to minutes: the job goes on


class Hopeless(Exception):
    """A queued job that cannot start (or waited past its bound): the message says why."""

    def __init__(self, reason: str, record: Mapping[str, str], waited_s: float):
        super().__init__(reason)
        self.reason, self.record, self.waited_s = reason, dict(record), waited_s


def hopeless(reason: str, stuck_s: float, waited_s: float, max_pending_s: Optional[float]) -> bool:
    """Whether a job queued for ``reason`` (``stuck_s`` with that reason, ``waited_s`` in all) will never start
    by waiting: Slurm's hopeless reasons at once, the stuck ones after a grace period, any past the bound."""
    if reason in HOPELESS or HOPELESS_LIMIT.match(reason):
        return True
    if reason.split(",")[0] in STUCK and stuck_s > STUCK_GRACE_S:
        return True
    return max_pending_s is not None and waited_s > max_pending_s


def follow(job_id: str, log, poll_s: float, max_pending_s: Optional[float] = None) -> dict[str, str]:
    """Poll until the job ends; logs when it is queued (again every PENDING_LOG_S while it waits, with its reason),
    starts and ends (a few events per step, not one per poll). Raises ``Hopeless`` for a queued job that cannot
    start. A controller that does not answer is waited for up to CONTROLLER_PATIENCE_S."""
    said, delay, started, silent_since = None, poll_s, time.monotonic(), None
    reason_was, reason_since, said_at = None, started, started
    while True:
        try:
            rec = job_record(job_id)
            silent_since = None
        except SlurmError as exc:
            silent_since = silent_since or time.monotonic()
            if time.monotonic() - silent_since > CONTROLLER_PATIENCE_S:
                raise
            log.warning(f"slurm job {job_id}: the controller did not answer ({exc}); asking again")
            time.sleep(min(delay, MAX_POLL_S))
            continue
        state = rec.get("JobState", "")
        if state and state not in WAITING and state not in UNDER_WAY:
            return rec
        if not rec and time.monotonic() - started > 120:
            return {"JobState": "UNKNOWN", "Reason": "Slurm has no record of the job"}
        kind = "running" if state in UNDER_WAY else "queued"
        reason, now = rec.get("Reason", "None"), time.monotonic()
        if kind == "queued":
            if reason != reason_was:
                reason_was, reason_since = reason, now
            if hopeless(reason, now - reason_since, now - started, max_pending_s):
                raise Hopeless(reason, rec, now - started)
        if kind != said or (kind == "queued" and now - said_at >= PENDING_LOG_S):
            where = f" on {rec.get('NodeList')}" if kind == "running" else f" ({reason})" if reason != "None" else ""
            waited = f" for {(now - started) / 60:.0f} min" if kind == said else ""
            log.info(f"slurm job {job_id} {'still ' if waited else ''}{kind}{where}{waited}")
            said, said_at = kind, now
        time.sleep(delay)
        delay = min(delay * 1.5, MAX_POLL_S)


SETTINGS = {
    "cpus": "NPZFIX_SLURM_CPUS",
    "partition": "NPZFIX_SLURM_PARTITION",
    "args": "NPZFIX_SLURM_ARGS (--mem, --time, --constraint, --qos, --account ...)",
    "wait": "NPZFIX_SLURM_MAX_PENDING_S",
}


def cannot_start(job_id: str, exc: Hopeless, asked: str, s: SlurmSettings) -> Failure:
    """The step's failure for a job Slurm would never start: the job, the reason, what was asked, what to change."""
    rec = exc.record
    partition = rec.get("Partition") or s.partition or "the default partition"
    tres = rec.get("ReqTRES") or rec.get("TRES") or ""
    memory = re.search(r"mem=([^,]+)", tres)
    asked_full = f"{asked}{f', {memory.group(1)} memory' if memory else ''} in partition {partition}"
    if exc.reason in HOPELESS or HOPELESS_LIMIT.match(exc.reason) or exc.reason.split(",")[0] in STUCK:
        change = f"change {SETTINGS['cpus']}, {SETTINGS['partition']} or {SETTINGS['args']}"
        why = f"pending with Reason={exc.reason}, which waiting does not cure"
    else:
        change = f"raise {SETTINGS['wait']} or ask for less ({SETTINGS['cpus']}, {SETTINGS['args']})"
        why = f"still pending ({exc.reason}) after {exc.waited_s:.0f} s, over {SETTINGS['wait']}={s.max_pending_s:g}"
    return Failure(
        description=f"slurm job {job_id} cannot start: {why}; it asked for {asked_full}; it was cancelled. To run, "
        f"{change}.",
        metadata={"slurm_job_id": job_id, "slurm_state": "PENDING", "slurm_reason": exc.reason},
    )


@dataclass
class SlurmJob:
    """A job that COMPLETED: its id and log, and the Pipes session that holds what it reported."""

    id: str
    log: str
    session: Any

    def failure(self, what: str, state: str = COMPLETED) -> Failure:
        return Failure(
            description=f"slurm job {self.id} {what}; the tail of its log:\n{tail(self.log)}",
            metadata={"slurm_job_id": self.id, "slurm_state": state, "slurm_log": MetadataValue.path(self.log)},
        )


def run(context, payload: dict, name: str, cpus: int, gpu: bool, s: SlurmSettings) -> SlurmJob:
    """Run ``payload`` (``slurm_job``'s input) as one Slurm job through a Pipes session, once the job
    COMPLETED; raises ``Failure`` (job id, state, log tail) otherwise."""
    attempt = f"{payload['place'].asset}.{payload['place'].partition or 'run'}.{int(time.time() * 1000)}"
    work = os.path.join(s.work_dir, context.run.run_id, re.sub(r"[^A-Za-z0-9_.-]+", "_", attempt))
    os.makedirs(work, exist_ok=True)
    with open(os.path.join(work, "step.pkl"), "wb") as f:
        pickle.dump(payload, f)
    script, log = os.path.join(work, "job.sh"), os.path.join(work, "slurm-%j.log")
    with open(script, "w") as f:
        f.write(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m npzfix_dagster.execution.slurm_job {shlex.quote(work)}\n")
    os.chmod(script, 0o755)
    injector = PipesFileContextInjector(os.path.join(work, "context.json"))
    reader = PipesFileMessageReader(os.path.join(work, "messages.jsonl"))
    with quiet_pipes(), open_pipes_session(context, injector, reader) as session:
        env = {**os.environ, **session.get_bootstrap_env_vars()}
        misfit = too_big(cpus, gpu, s.partition)
        if misfit:
            raise Failure(
                description=f"not submitted to Slurm: {misfit}; change {SETTINGS['cpus']}, {SETTINGS['partition']} "
                f"or {SETTINGS['args']}; nothing was touched"
            )
        try:
            job_id = submit(script, name, log, cpus, gpu, s, env)
        except SlurmError as exc:
            raise Failure(description=f"could not submit the step to Slurm: {exc}; nothing was touched") from exc
        log = log.replace("%j", job_id)
        asked = f"{cpus} CPU(s){', 1 GPU' if gpu else ''}"
        context.log.info(f"slurm job {job_id} submitted ({name}: {asked}); log {log}")
        try:
            rec = follow(job_id, context.log, s.poll_s, s.max_pending_s)
        except BaseException as exc:  # hopeless, or the run was terminated: leave no job behind
            try:
                cancel(job_id)
                what = "cannot start" if isinstance(exc, Hopeless) else "the step was interrupted"
                context.log.warning(f"slurm job {job_id} cancelled: {what}")
            except SlurmError as cexc:
                context.log.error(f"slurm job {job_id} could not be cancelled: {cexc}")
            if isinstance(exc, Hopeless):
                raise cannot_start(job_id, exc, asked, s) from None
            raise
    job = SlurmJob(job_id, log, session)
    state = rec.get("JobState", "UNKNOWN")
    if state in RETRYABLE:
        from dagster import RetryRequested

        tries = getattr(context, "retry_number", 0)
        context.log.warning(
            f"slurm job {job_id} ended {state} on {rec.get('NodeList', '?')} (not the step's doing): "
            f"retry {tries + 1} of {MAX_RETRIES}; files already done are skipped"
        )
        if tries < MAX_RETRIES:
            raise RetryRequested(max_retries=MAX_RETRIES, seconds_to_wait=RETRY_WAIT_S)
    if state != COMPLETED:
        why = ", ".join(f"{k} {rec[k]}" for k in ("Reason", "ExitCode", "NodeList") if rec.get(k))
        raise job.failure(f"ended {state} ({why})", state)
    context.log.info(f"slurm job {job_id} {state} on {rec.get('NodeList', '?')}")
    return job

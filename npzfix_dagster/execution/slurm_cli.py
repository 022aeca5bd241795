"""Slurm's command-line tools as npzfix calls them: ``sinfo`` (will any node fit?), ``sbatch``, ``scontrol`` /
``sacct`` (a job's record), ``scancel``, each with a timeout and its output in the error. ``slurm`` follows jobs
with them."""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass
from typing import Mapping, Optional

class SlurmError(RuntimeError):
    """sbatch/scontrol/scancel failed or are missing; the message has their output."""


@dataclass(frozen=True)
class SlurmSettings:
    partition: Optional[str] = None
    args: str = ""  # extra sbatch arguments: account, time limit, constraints (shell words)
    cpus: int = 0  # per job; 0: what the step would use (steps.job_cpus)
    work_dir: str = ""  # on a file system the compute nodes share: step files, Pipes channel, job logs
    poll_s: float = 1.0  # first polls; then slower, up to MAX_POLL_S (thousands of steps share one controller)
    max_pending_s: Optional[float] = None  # a queued job waiting longer (for any reason) is cancelled


def _call(cmd: list[str], env: Optional[Mapping[str, str]] = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, env=dict(env) if env else None, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SlurmError(f"{cmd[0]}: {exc}") from exc


def _run(cmd: list[str], env: Optional[Mapping[str, str]] = None) -> str:
    p = _call(cmd, env)
    if p.returncode != 0:
        raise SlurmError(f"{shlex.join(cmd)} failed ({p.returncode}): {(p.stderr or p.stdout).strip()[:500]}")
    return p.stdout


def _gpus_of(gres: str) -> int:
    """GPUs in a node's GRES string (``gpu:4``, ``gpu:a100:4(S:0-1)``, ``(null)``)."""
    n = 0
    for item in gres.split(","):
        parts = item.split("(")[0].split(":")
        if parts[0] == "gpu" and len(parts) > 1 and parts[-1].isdigit():
            n += int(parts[-1])
    return n


def too_big(cpus: int, gpu: bool, partition: Optional[str]) -> Optional[str]:
    """Why no node of the partition could ever run a job of this size (from ``sinfo``), or None when one could or
    ``sinfo`` cannot tell: such a job is refused before it is submitted, not left pending forever."""
    p = _call(["sinfo", "-h", "-N", "-o", "%P|%c|%G"])
    if p.returncode != 0 or not p.stdout.strip():
        return None
    nodes = []
    for line in p.stdout.splitlines():
        name, ncpu, gres = (line.split("|") + ["", "", ""])[:3]
        default = name.endswith("*")
        if (partition is None and default) or name.rstrip("*") == partition:
            try:
                nodes.append((int(ncpu.rstrip("+")), _gpus_of(gres)))
            except ValueError:
                return None
    if not nodes:  # an unknown partition: sbatch says so in its own words
        return None
    if any(c >= cpus and (g >= 1 or not gpu) for c, g in nodes):
        return None
    best = max(nodes)
    return (
        f"{cpus} CPU(s){' and 1 GPU' if gpu else ''} asked, but the largest node of "
        f"{partition or 'the default partition'} has {best[0]} CPU(s) and {max(g for _, g in nodes)} GPU(s) (Slurm "
        "would keep it pending with Reason=PartitionConfig, forever)"
    )


def submit(script: str, name: str, log: str, cpus: int, gpu: bool, s: SlurmSettings, env: Mapping[str, str]) -> str:
    cmd = ["sbatch", "--parsable", f"--job-name={name}", f"--output={log}", f"--cpus-per-task={cpus}"]
    cmd += ["--gres=gpu:1"] if gpu else []
    cmd += [f"--partition={s.partition}"] if s.partition else []
    cmd += [*shlex.split(s.args), script]
    return _run(cmd, env).strip().split(";")[0]


def job_record(job_id: str) -> dict[str, str]:
    """The job's fields from ``scontrol show job`` (JobState, Reason, NodeList, ExitCode, times), else from
    ``sacct`` (accounting) once the controller has purged it (``MinJobAge``); {} when neither knows it."""
    p = _call(["scontrol", "show", "job", "-o", job_id])
    if p.returncode == 0:
        return dict(re.findall(r"(\w+)=(\S*)", p.stdout))
    if "Invalid job id" not in p.stderr:  # scontrol's own words for a job it no longer holds
        raise SlurmError(f"scontrol show job {job_id} failed ({p.returncode}): {p.stderr.strip()[:500]}")
    p = _call(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State,ExitCode,NodeList,Start,End,Reason"])
    line = p.stdout.strip().splitlines()[:1] if p.returncode == 0 else []
    if not line:
        return {}
    state, code, nodes, start, end, reason = (line[0].split("|") + [""] * 6)[:6]
    fields = ("JobState", "ExitCode", "NodeList", "StartTime", "EndTime", "Reason")
    return dict(zip(fields, ((state.split() or ["UNKNOWN"])[0], code, nodes, start, end, reason)))


def cancel(job_id: str) -> None:
    _run(["scancel", job_id])


def tail(path: str, n: int = 20) -> str:
    try:
        with open(path, errors="replace") as f:
            return "\n".join(f.read().splitlines()[-n:])
    except OSError:
        return "(no log)"

"""A private one-node Slurm cluster in a directory: munge + slurmctld + slurmd with fake GPUs, for tests and
for trying ``NPZFIX_EXECUTION=slurm`` on one machine.

Needs root and Debian's ``slurm-wlm`` and ``munge`` (``apt-get install -y slurm-wlm munge``). Nothing
global is touched: key, sockets, state, spool, logs and configs live in DIR, ports are free ones, and every
daemon is stopped by the PID in its pid file. The GPUs are character devices made with ``mknod`` (Slurm
sets ``CUDA_VISIBLE_DEVICES`` only for GRES backed by a device file); nothing can compute on them, so a job
sees its allocation but torch sees no CUDA device.

``start DIR [--gpus N]`` prints ``SLURM_CONF=DIR/slurm.conf``; ``stop DIR`` stops it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

DAEMONS = ("slurmd", "slurmctld", "munged")
PARTITION = "gpu"


class SlurmUnavailable(RuntimeError):
    """Slurm cannot run here (not root, packages missing, a daemon did not start); the message says which."""


def missing() -> str | None:
    """Why a private cluster cannot start here, or None."""
    if os.geteuid() != 0:
        return "not root (slurmd and munged run as root here)"
    gone = [b for b in ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel") if not shutil.which(b)]
    if gone:
        return f"{', '.join(gone)} not installed (apt-get install -y slurm-wlm munge)"
    return None


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _conf(d: str, host: str, cpus: int, gpus: int) -> str:
    """``cpus`` may be more than the machine has (``config_overrides``): the GPUs, not the cores, then bound
    how many GPU jobs run at once, as on a real GPU node."""
    ctld, slurmd = _free_ports(2)
    return "\n".join(
        [
            "ClusterName=npzfix",
            f"SlurmctldHost={host}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={d}/munge/sock",
            f"SlurmctldPort={ctld}",
            f"SlurmdPort={slurmd}",
            f"StateSaveLocation={d}/state",
            f"SlurmdSpoolDir={d}/spool/slurmd.%n",
            f"SlurmctldPidFile={d}/run/slurmctld.pid",
            f"SlurmdPidFile={d}/run/slurmd.pid",
            f"SlurmctldLogFile={d}/log/slurmctld.log",
            f"SlurmdLogFile={d}/log/slurmd.log",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "GresTypes=gpu",
            "MinJobAge=3600",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=sched_interval=1",
            "MpiDefault=none",
            "ReturnToService=2",
            "SlurmdTimeout=30",
            "KillWait=5",
            "SlurmdParameters=config_overrides",
            f"NodeName={host} CPUs={cpus} RealMemory=8000 Gres=gpu:{gpus} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
    )


def _pid(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def env(d: str) -> dict[str, str]:
    """What a client (sbatch, scontrol, the Dagster step) needs to reach this cluster."""
    return {"SLURM_CONF": os.path.join(os.path.abspath(d), "slurm.conf")}


def _write_files(d: str, gpus: int, cpus: int) -> str:
    """The cluster's directories, munge key, fake GPU devices, slurm.conf and gres.conf; returns the key's path."""
    for sub in ("munge", "state", "spool", "run", "log", "dev"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    os.chmod(f"{d}/munge", 0o700)
    key = f"{d}/munge/key"
    if not os.path.exists(key):
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o400)
    host = socket.gethostname().split(".")[0]
    for i in range(gpus):
        dev = f"{d}/dev/nvidia{i}"
        if not os.path.exists(dev):  # /dev/null's numbers; a container without CAP_MKNOD refuses
            p = subprocess.run(["mknod", "-m", "666", dev, "c", "1", "3"], capture_output=True, text=True)
            if p.returncode != 0:
                raise SlurmUnavailable(f"cannot make the fake GPU devices: {p.stderr.strip()}")
    with open(f"{d}/slurm.conf", "w") as f:
        f.write(_conf(d, host, cpus, gpus))
    with open(f"{d}/gres.conf", "w") as f:
        f.write(f"NodeName={host} Name=gpu File={d}/dev/nvidia[0-{gpus - 1}]\n")
    return key


def start(d: str, gpus: int = 4, cpus: int | None = None, timeout: float = 60.0) -> dict[str, str]:
    """Start (or find running) the cluster in ``d`` (a node of ``gpus`` fake GPUs and ``cpus`` CPUs, default
    this machine's); returns ``env(d)`` once the node is idle."""
    why = missing()
    if why:
        raise SlurmUnavailable(why)
    d = os.path.abspath(d)
    if _alive(_pid(f"{d}/run/slurmctld.pid")):
        return env(d)
    key = _write_files(d, gpus, cpus or os.cpu_count() or 1)
    e = {**os.environ, **env(d)}
    p = subprocess.run(
        [
            "munged",
            f"--socket={d}/munge/sock",
            f"--key-file={key}",
            f"--pid-file={d}/run/munged.pid",
            f"--log-file={d}/log/munged.log",
            f"--seed-file={d}/munge/seed",
            "--force",
        ],
        env=e,
        capture_output=True,
        text=True,
    )
    if p.returncode != 0:
        raise SlurmUnavailable(f"munged did not start: {p.stderr.strip() or _tail(f'{d}/log/munged.log')}")
    for daemon in ("slurmctld", "slurmd"):
        p = subprocess.run([daemon], env=e, capture_output=True, text=True)
        if p.returncode != 0:
            stop(d)
            raise SlurmUnavailable(f"{daemon} did not start: {p.stderr.strip() or _tail(f'{d}/log/{daemon}.log')}")
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        p = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=e, capture_output=True, text=True)
        state = p.stdout.strip()
        if state in ("idle", "mixed", "allocated"):
            return env(d)
        time.sleep(0.5)
    stop(d)
    raise SlurmUnavailable(f"the node did not come up within {timeout:.0f} s (state {state!r}): {_tail(f'{d}/log/slurmd.log')}")


def _tail(path: str, n: int = 5) -> str:
    try:
        with open(path, errors="replace") as f:
            return " | ".join(f.read().splitlines()[-n:])
    except OSError:
        return ""


def stop(d: str, timeout: float = 20.0) -> None:
    """Stop every daemon of the cluster in ``d`` by its pid file (jobs still running are killed with slurmd)."""
    d = os.path.abspath(d)
    for daemon in DAEMONS:
        pid = _pid(f"{d}/run/{daemon}.pid")
        if not _alive(pid):
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m npzfix_tools.local_slurm", description=__doc__)
    ap.add_argument("action", choices=("start", "stop"))
    ap.add_argument("dir", help="where the cluster keeps everything (created on first start)")
    ap.add_argument("--gpus", type=int, default=4, help="fake GPUs of the node")
    ap.add_argument("--cpus", type=int, help="CPUs the node declares (default: this machine's)")
    a = ap.parse_args(argv)
    try:
        if a.action == "start":
            for k, v in start(a.dir, a.gpus, a.cpus).items():
                print(f"{k}={v}")
        else:
            stop(a.dir)
    except SlurmUnavailable as exc:
        print(f"local_slurm: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

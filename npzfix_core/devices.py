"""Device policy: which GPU a process may use, and an exclusive lease on the one it takes.

Shared machines reserve some GPUs (the original tools never touched GPUs 0 and
3). ``NPZFIX_GPUS`` / ``--gpus`` lists the allowed ones (torch ordinals, i.e.
after ``CUDA_VISIBLE_DEVICES``). ``auto`` takes a free allowed GPU, else the CPU,
and says which.

Several runs start together on a multi-GPU host while their models are still
loading, so free memory cannot tell them apart: every one would pick the same
GPU. A process that takes a GPU therefore holds an ``flock`` on a per-GPU lease
file until it exits (the kernel drops it on ``kill -9``); the next process takes
the next unleased GPU, or waits for one, bounded, naming the holders. Pool
``gpu`` limit = number of allowed GPUs then gives N runs on N distinct GPUs.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger("npzfix")

FREE_FRACTION = 0.9  # a GPU with at least this share of its memory free counts as free
LEASE_DIR_ENV = "NPZFIX_GPU_LEASE_DIR"
LEASE_WAIT_ENV = "NPZFIX_GPU_LEASE_WAIT_S"
DEFAULT_WAIT_S = 3600.0  # a queued run may wait for a GPU as long as a typical shard takes
POLL_S = 1.0
LOG_EVERY_S = 60.0


class DeviceError(ValueError):
    pass


@dataclass(frozen=True)
class Gpu:
    """One GPU as this process sees it: torch ordinal, host-wide id (lease name), memory in bytes."""

    ordinal: int
    physical: str
    free: int
    total: int


# Leases held by this process: one per GPU, for the process's lifetime (a teacher is built once per run
# process; the kernel releases the lock when the process ends, however it ends).
_HELD: dict[str, int] = {}


def allowed_gpus(spec: str | None = None) -> list[int] | None:
    """``"1,2,4"`` -> [1, 2, 4]; None (or "all") means every visible GPU. Anything else (a negative id, an
    empty entry, ``","``) is refused: read silently, it would mean "no GPU" or "all of them"."""
    if spec is None or spec.strip() in ("", "all"):
        return None
    parts = [x.strip() for x in spec.split(",")]
    if not all(p.isdigit() for p in parts):
        raise DeviceError(f"bad GPU list {spec!r}: expected GPU numbers >= 0, e.g. 1,2,4,5,6,7 (or all)")
    return [int(p) for p in parts]


def check_device(device: str) -> None:
    """``cpu | cuda | cuda:N | auto``, checked without touching a GPU."""
    if device in ("cpu", "cuda", "auto") or (device.startswith("cuda:") and device[5:].isdigit()):
        return
    raise DeviceError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto")


def physical_ids(n: int) -> list[str]:
    """Host-wide names of torch's ordinals 0..n-1: the entries of ``CUDA_VISIBLE_DEVICES`` where set (a pod
    or a runner pinned to GPU 3 sees it as cuda:0, but leases it as 3), else the ordinals."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return [visible[i] if i < len(visible) else str(i) for i in range(n)]


def probe_cuda() -> list[Gpu]:
    import torch

    if not torch.cuda.is_available():
        return []
    n = torch.cuda.device_count()
    out = []
    for i, phys in enumerate(physical_ids(n)):
        free, total = torch.cuda.mem_get_info(i)
        out.append(Gpu(i, phys, free, total))
    return out


def default_lease_dir() -> str:
    return os.path.join(tempfile.gettempdir(), "npzfix-gpu-leases")


def _lease_path(directory: str, physical: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in physical)
    return os.path.join(directory, f"gpu-{safe}.lease")


def holder(directory: str, physical: str) -> str:
    """Who holds a GPU's lease, as its holder wrote it (pid, host, since); '' when unknown."""
    try:
        with open(_lease_path(directory, physical)) as f:
            return f.read().strip()
    except OSError:
        return ""


def _try_lease(directory: str, gpu: Gpu) -> bool:
    if gpu.physical in _HELD:
        return True
    os.makedirs(directory, mode=0o1777, exist_ok=True)
    path = _lease_path(directory, gpu.physical)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%F %T')}\n".encode(), 0)
    _HELD[gpu.physical] = fd
    return True


def release_all() -> None:
    """Drop this process's leases (process exit does this too; tests and long-lived hosts call it)."""
    for fd in _HELD.values():
        os.close(fd)
    _HELD.clear()


def lease(
    candidates: Callable[[], list[Gpu]],
    need_free: bool,
    wait_s: float = DEFAULT_WAIT_S,
    directory: str | None = None,
    poll_s: float = POLL_S,
) -> Gpu | None:
    """Lease the first candidate nobody holds (and, with ``need_free``, whose memory is free).

    Waits while every usable candidate is leased by another process, up to ``wait_s``, then raises.
    Returns None when no candidate is usable at all (each busy with memory of a process that holds no
    lease): the caller decides (``auto`` uses the CPU). ``candidates`` is asked again on every poll, so
    free memory is read after the previous holder has gone.
    """
    directory = directory or default_lease_dir()
    deadline = time.monotonic() + wait_s
    last_log = None
    while True:
        gpus = candidates()
        for gpu in gpus:
            if gpu.physical in _HELD:  # this process leased it already (one model per process)
                return gpu
        leased_by_others = []
        for gpu in gpus:
            if not _try_lease(directory, gpu):
                leased_by_others.append(gpu)
            elif need_free and gpu.free < FREE_FRACTION * gpu.total:
                os.close(_HELD.pop(gpu.physical))  # memory of a process outside npzfix's leases: not ours
            else:
                return gpu
        if not leased_by_others:
            return None
        now = time.monotonic()
        busy = "; ".join(
            f"cuda:{g.ordinal} ({holder(directory, g.physical) or 'holder unknown'})" for g in leased_by_others
        )
        if now >= deadline:
            raise DeviceError(
                f"every usable GPU is leased by another process after waiting {wait_s:.0f} s: {busy} "
                f"(leases in {directory}; raise {LEASE_WAIT_ENV}, or set pool 'gpu' to the number of GPUs)"
            )
        if last_log is None or now - last_log >= LOG_EVERY_S:
            log.info("waiting for a GPU lease (up to %.0f s more): %s", deadline - now, busy)
            last_log = now
        time.sleep(poll_s)


def resolve(
    device: str,
    gpus: str | None = None,
    probe: Callable[[], list[Gpu]] = probe_cuda,
    wait_s: float = DEFAULT_WAIT_S,
    lease_dir: str | None = None,
) -> str:
    """``cpu | cuda | cuda:N | auto`` -> a concrete device string, honouring the allowlist, with the GPU leased."""
    allow = allowed_gpus(gpus)
    check_device(device)
    if device == "cpu":
        return "cpu"
    visible = probe()
    n = len(visible)
    usable = [g.ordinal for g in visible if allow is None or g.ordinal in allow]
    if device.startswith("cuda:"):
        try:
            idx = int(device.split(":", 1)[1])
        except ValueError as exc:
            raise DeviceError(f"bad device {device!r}: use cuda:N") from exc
        if idx >= n:
            raise DeviceError(f"{device} requested but this machine has {n} GPU(s)")
        if allow is not None and idx not in allow:
            raise DeviceError(f"{device} is not in the allowed GPUs {allow} (NPZFIX_GPUS / --gpus)")
        usable = [idx]
    elif device == "cuda" and not usable:
        raise DeviceError(f"no allowed GPU available (visible: {n}, allowed: {allow if allow is not None else 'all'})")
    first = [visible]

    def candidates() -> list[Gpu]:
        gpus = first.pop() if first else probe()
        return [g for g in gpus if g.ordinal in usable]

    gpu = lease(candidates, need_free=device == "auto", wait_s=wait_s, directory=lease_dir)
    if gpu is None:
        log.info("device auto: no free allowed GPU (visible %d, allowed %s); using the CPU", n, allow or "all")
        return "cpu"
    log.info(
        "device %s: using cuda:%d (GPU %s, leased; %.1f of %.1f GiB free)",
        device,
        gpu.ordinal,
        gpu.physical,
        gpu.free / 2**30,
        gpu.total / 2**30,
    )
    return f"cuda:{gpu.ordinal}"


def to_torch_device(device: str):
    import torch

    return torch.device(device)


def usable_cpus(cgroup_root: str = "/sys/fs/cgroup") -> int:
    """CPUs this process may use: its affinity, capped by a cgroup CPU quota (a container's CPU limit),
    which ``os.cpu_count()`` ignores — a pod limited to 8 CPUs on a 128-core node must not start 127 workers."""
    n = len(os.sched_getaffinity(0))
    quota = _cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        n = min(n, max(1, -(-quota[0] // quota[1])))
    return max(1, n)


def _cgroup_cpu_quota(root: str) -> tuple[int, int] | None:
    """(quota, period) in microseconds from cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``; None: no limit."""
    try:
        with open(os.path.join(root, "cpu.max")) as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else _positive_pair(int(quota), int(period))
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as f:
            quota = int(f.read())
        with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as f:
            period = int(f.read())
        return _positive_pair(quota, period)  # -1: no limit
    except (OSError, ValueError):
        return None


def _positive_pair(quota: int, period: int) -> tuple[int, int] | None:
    return (quota, period) if quota > 0 and period > 0 else None

"""Device policy: which GPU a run may use.

Shared machines reserve some GPUs (the original tools never touched GPUs 0 and
3). ``NPZFIX_GPUS`` / ``--gpus`` lists the allowed ones; ``auto`` takes the first
allowed GPU that is free, else the CPU, and says which.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("npzfix")

FREE_FRACTION = 0.9  # a GPU with at least this share of its memory free counts as free


class DeviceError(ValueError):
    pass


def allowed_gpus(spec: str | None = None) -> list[int] | None:
    """``"1,2,4"`` (or ``$NPZFIX_GPUS``) -> [1, 2, 4]; None means every visible GPU."""
    spec = spec if spec is not None else os.environ.get("NPZFIX_GPUS")
    if spec is None or spec.strip() in ("", "all"):
        return None
    try:
        return [int(x) for x in spec.split(",") if x.strip()]
    except ValueError as exc:
        raise DeviceError(f"bad GPU list {spec!r}: expected e.g. 1,2,4,5,6,7") from exc


def resolve(device: str, gpus: str | None = None) -> str:
    """``cpu | cuda | cuda:N | auto`` -> a concrete device string, honouring the allowlist."""
    allow = allowed_gpus(gpus)
    if device == "cpu":
        return "cpu"
    if not (device in ("auto", "cuda") or device.startswith("cuda:")):
        raise DeviceError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto")
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    candidates = [i for i in range(n) if allow is None or i in allow]
    if device.startswith("cuda:"):
        idx = int(device.split(":", 1)[1])
        if idx >= n:
            raise DeviceError(f"{device} requested but this machine has {n} GPU(s)")
        if allow is not None and idx not in allow:
            raise DeviceError(f"{device} is not in the allowed GPUs {allow} (NPZFIX_GPUS / --gpus)")
        return device
    if device == "cuda" and not candidates:
        raise DeviceError(f"no allowed GPU available (visible: {n}, allowed: {allow if allow is not None else 'all'})")
    for i in candidates:
        free, total = torch.cuda.mem_get_info(i)
        if device == "cuda" or free >= FREE_FRACTION * total:
            log.info("device %s: using cuda:%d (%.1f of %.1f GiB free)", device, i, free / 2**30, total / 2**30)
            return f"cuda:{i}"
    log.info("device auto: no free allowed GPU (visible %d, allowed %s); using the CPU", n, allow or "all")
    return "cpu"


def to_torch_device(device: str):
    import torch

    return torch.device(device)

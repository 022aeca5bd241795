"""Operational settings that come from the environment, read once at the edge and carried in the request.

The core never reads ``os.environ`` for these: the CLI and the Dagster request builders call
``Settings.from_env(os.environ)`` when a run starts (not at import), the result travels inside the request
(to worker processes too; it pickles), and core functions take the plain values. A test or a library user
passes a ``Settings`` instead of mutating the process environment.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields, replace
from typing import Mapping

from npzfix_core.devices import DEFAULT_WAIT_S, LEASE_DIR_ENV, LEASE_WAIT_ENV, default_lease_dir
from npzfix_core.locks import DEFAULT_LOCK_TIMEOUT_S, LOCK_TIMEOUT_ENV

# Variables of earlier releases that no longer mean anything: set, they are refused by name rather than ignored.
REMOVED = {
    "NPZFIX_JPEG_DECODER": "images are always decoded as the original tools and the student's loader decode them "
    "(OpenCV IMREAD_COLOR, EXIF orientation applied); unset it",
}
DEFAULT_MAX_PIXELS = 100_000_000  # SA-1B images are ~3.4 MP; a 20000x20000 claim would cost GBs per file


def default_state_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "npzfix")


@dataclass(frozen=True)
class Settings:
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S  # how long a writer waits for another's lock on one NPZ
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger image sizes claimed by a JSON are refused, not allocated
    state_dir: str = field(default_factory=default_state_dir)  # files that killed a worker, across runs
    gpu_lease_dir: str = field(default_factory=default_lease_dir)  # one flock per GPU, shared by processes
    gpu_lease_wait_s: float = DEFAULT_WAIT_S  # how long a run waits for a GPU another process leased

    def validate(self) -> None:
        for name in ("lock_timeout_s", "gpu_lease_wait_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):  # nan or inf would wait forever
                raise ValueError(f"{ENV[name]}={value!r}: must be a finite number of seconds >= 0")
        if self.max_pixels < 1:
            raise ValueError(f"{ENV['max_pixels']} must be >= 1")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """The defaults, overridden by the variables of ``ENV`` that are set (and not empty); a value that does
        not parse names its variable."""
        for name, why in REMOVED.items():
            if environ.get(name):
                raise ValueError(f"environment variable {name} is no longer read: {why}")
        out = cls()
        for f in fields(cls):
            raw = environ.get(ENV[f.name])
            if raw in (None, ""):
                continue
            cast = type(getattr(out, f.name))
            try:
                value = cast(raw)
            except ValueError as exc:
                raise ValueError(f"environment variable {ENV[f.name]}={raw!r} is not a valid {cast.__name__}") from exc
            out = replace(out, **{f.name: value})
        out.validate()
        return out


ENV = {
    "lock_timeout_s": LOCK_TIMEOUT_ENV,
    "max_pixels": "NPZFIX_MAX_PIXELS",
    "state_dir": "NPZFIX_STATE_DIR",
    "gpu_lease_dir": LEASE_DIR_ENV,
    "gpu_lease_wait_s": LEASE_WAIT_ENV,
}

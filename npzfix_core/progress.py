"""Progress of a long run: a bar on a terminal, else log lines whose gap doubles, so a 3-hour partition writes
~40 lines to the event log and is never silent for more than five minutes."""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from npzfix_core.report import RunReport

log = logging.getLogger("npzfix")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds // 3600} h {round(seconds % 3600 / 60):02d} min"


class Progress:
    """A tqdm bar on a terminal, else a log line (files done, rate, ETA when the total is known, counts) after
    ``interval`` seconds, the gap doubling up to ``max_interval``: a 3-hour partition logs ~40 lines, so the
    run's event log stays readable and a long run is never silent for more than five minutes."""

    def __init__(
        self, total: int | None, desc: str, interval: float = 10.0, enabled: bool = True, max_interval: float = 300.0
    ):
        self.total, self.desc, self.interval, self.max_interval = total, desc, interval, max_interval
        self.n, self.t0, self.last = 0, time.time(), time.time()
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="file")
        self.enabled = enabled

    def step(self, report: RunReport) -> None:
        self.n += 1
        if self.bar is not None:
            self.bar.update(1)
            return
        now = time.time()
        if self.enabled and now - self.last >= self.interval:
            self.last = now
            self.interval = min(self.interval * 2, self.max_interval)
            log.info("%s", self.line(report, now))

    def line(self, report: RunReport, now: float) -> str:
        rate = self.n / max(now - self.t0, 1e-9)
        done = f"{self.n} files"
        if self.total:
            left = max(self.total - self.n, 0)
            eta = f", ETA {_duration(left / rate)}" if rate > 0 and left else ""
            done = f"{self.n}/{self.total} files ({100 * self.n / self.total:.1f} %), {rate:.1f} files/s{eta}"
        else:
            done += f", {rate:.1f} files/s"
        counts = ", ".join(f"{k} {v}" for k, v in report.counts.items() if v)
        return f"{self.desc}: {done}; {counts}" if counts else f"{self.desc}: {done}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

"""What a run did: counts, failures with reasons, timings. One object for CLI, Dagster and tests."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import time
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from npzfix_core.errors import InputError

log = logging.getLogger("npzfix")

# Outcome statuses a work item can end in.
UPDATED = "updated"
WOULD_UPDATE = "would_update"  # --dry-run
SKIPPED_DONE = "skipped_done"
SKIPPED_LEGACY = "skipped_legacy"  # flagged by the original tools, no provenance
ADOPTED = "adopted"  # a legacy file stamped with provenance after a verified sample of its directory
MISSING = "missing_source"
FAILED = "failed"
STATUSES = (UPDATED, WOULD_UPDATE, SKIPPED_DONE, SKIPPED_LEGACY, ADOPTED, MISSING, FAILED)
EXAMPLES = 4  # paths kept per status, for checks that sample what a run did
# Per-file log lines of each kind before they are only counted: in Dagster every log line is an event
# (~3 ms each in SQLite), and a person reads tens of them, not 11,000. The full list is in the report file.
LOG_FIRST = 20


@dataclass(frozen=True)
class Outcome:
    path: str
    status: str
    reason: str = ""
    seconds: float = 0.0


@contextlib.contextmanager
def _atomic_text(path: str, newline: str | None = None):
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8", errors="surrogateescape", newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def outcome_for(path: str, exc: BaseException, source: str | None = None, seconds: float = 0.0) -> Outcome:
    """The one mapping from a per-file exception to its Outcome, shared by every runner: a file that vanished
    is a missing source everywhere; bad input names the source; anything else fails only this file."""
    from npzfix_core.store import NpzError  # the store imports NumPy; a report alone does not need it

    where = f" {source}" if source else ""
    if isinstance(exc, NpzError):
        return Outcome(path, FAILED, f"NPZ: {exc}", seconds)
    if isinstance(exc, (json.JSONDecodeError, UnicodeDecodeError)):
        return Outcome(path, FAILED, f"malformed JSON{where}: {exc}", seconds)
    if isinstance(exc, InputError):
        return Outcome(path, FAILED, f"bad input{where}: {exc}", seconds)
    if isinstance(exc, RecursionError):  # json.loads of a document nested thousands deep
        return Outcome(path, FAILED, f"malformed JSON{where}: nested too deeply to read", seconds)
    if isinstance(exc, FileNotFoundError):
        return Outcome(path, MISSING, f"file vanished: {exc.filename or path}", seconds)
    if isinstance(exc, OSError):
        return Outcome(path, FAILED, f"I/O error: {exc.strerror or exc} ({exc.filename or path})", seconds)
    log.error("unexpected %s on %s", type(exc).__name__, path, exc_info=exc)
    return Outcome(path, FAILED, f"unexpected {type(exc).__name__}: {exc}", seconds)


def _rank(path: str) -> int:
    return zlib.crc32(path.encode("utf-8", "surrogateescape"))


class Budget:
    """``--max-files``: bounds files *updated*, counting those in flight, so repeated bounded runs make
    progress (skipped files do not count) and parallel stages never overshoot."""

    def __init__(self, max_updates: int | None):
        self.max_updates = max_updates or None  # 0 means no limit, as in the original tools

    def allows(self, report: "RunReport", in_flight: int) -> bool:
        return self.max_updates is None or report.updated + in_flight < self.max_updates

    @property
    def reason(self) -> str:
        return f"--max-files {self.max_updates} reached"

    def stop(self, report: "RunReport") -> None:
        """The run stops here: the report (and the schedule, through its metadata) says why."""
        report.stopped_early = self.reason


@dataclass
class RunReport:
    tool: str
    provenance: dict[str, Any] = field(default_factory=dict)  # what the run writes beside its flags
    request: dict[str, Any] = field(default_factory=dict)  # the request it ran, as given
    timings: dict[str, Any] = field(default_factory=dict)  # where the time went (features)
    warnings: list[str] = field(default_factory=list)  # said once per run, e.g. a random-init teacher
    counts: dict[str, int] = field(default_factory=lambda: {s: 0 for s in STATUSES})
    failures: list[dict[str, str]] = field(default_factory=list)  # path, status, reason
    # a few paths per status, the same ones whatever the order (smallest crc32 of the path): an asset check
    # recomputes some of each kind (a legacy file the run skipped, one it adopted, one it wrote)
    examples: dict[str, list[str]] = field(default_factory=dict)
    legacy: list[dict[str, Any]] = field(default_factory=list)  # per directory: legacy files verified, adopted, redone
    drift: dict[str, Any] = field(default_factory=dict)  # old vs new features of a sample of redone files
    seen: int = 0
    dry_run: bool = False
    started: float = field(default_factory=time.time)
    elapsed: float = 0.0
    stopped_early: str = ""
    vanished: str = ""  # a directory the run worked in was moved or deleted under it: the run did not do its work
    interrupted: str = ""  # the signal that stopped the run early (SIGINT, SIGTERM, SIGHUP)

    def add(self, outcome: Outcome) -> None:
        self.seen += 1
        self.counts[outcome.status] += 1
        kept = self.examples.setdefault(outcome.status, [])
        if len(kept) < EXAMPLES or _rank(outcome.path) < _rank(kept[-1]):
            kept.append(outcome.path)
            kept.sort(key=_rank)
            del kept[EXAMPLES:]
        if outcome.status in (FAILED, MISSING):
            self.failures.append({"path": outcome.path, "status": outcome.status, "reason": outcome.reason})
            if self.counts[outcome.status] <= LOG_FIRST:
                level = logging.ERROR if outcome.status == FAILED else logging.WARNING
                log.log(level, "%s %s: %s", outcome.status, outcome.path, outcome.reason)
                if self.counts[outcome.status] == LOG_FIRST:
                    log.warning("further %s files are only counted here (all are in the report file)", outcome.status)

    def finish(self) -> "RunReport":
        self.elapsed = time.time() - self.started
        for status in (FAILED, MISSING):
            if self.counts[status] > LOG_FIRST:
                log.warning(
                    "%d more %s files beyond the first %d logged (see the report file / failures table)",
                    self.counts[status] - LOG_FIRST,
                    status,
                    LOG_FIRST,
                )
        return self

    @property
    def updated(self) -> int:
        return self.counts[UPDATED] + self.counts[WOULD_UPDATE]

    @property
    def failed(self) -> int:
        return self.counts[FAILED]

    @property
    def files_per_s(self) -> float:
        return self.seen / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            import signal

            return 128 + signal.Signals[self.interrupted].value
        return 1 if self.counts[FAILED] or self.vanished else 0

    def check_directories(self, directories: Iterable[str]) -> None:
        """Say so when a directory of the run is gone at its end: its files were not done, whatever the counts."""
        gone = [d for d in directories if not os.path.isdir(d)]
        if gone:
            self.vanished = (
                f"{', '.join(gone[:3])}{' ...' if len(gone) > 3 else ''} vanished during the run (moved or deleted): "
                f"{self.counts[MISSING]} files could not be processed"
            )
            log.error("%s", self.vanished)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["files_per_s"] = round(self.files_per_s, 3)
        return d

    def to_dataframe(self):
        """Failures (path, status, reason) as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.failures, columns=["path", "status", "reason"])

    def write(self, path: str) -> tuple[str, str]:
        """JSON at ``path`` (``.json`` added if absent) and the failures as CSV beside it, each replaced
        atomically (a full disk leaves the previous file, not an empty one). Paths are kept losslessly:
        a file name that is not UTF-8 goes to the CSV as its own bytes, to the JSON as escaped lone surrogates."""
        base = path[:-5] if path.endswith(".json") else path
        json_path, csv_path = base + ".json", base + ".csv"
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        with _atomic_text(json_path) as f:
            json.dump(self.to_dict(), f, indent=2)
        with _atomic_text(csv_path, newline="") as f:
            w = csv.DictWriter(f, fieldnames=["path", "status", "reason"])
            w.writeheader()
            w.writerows(self.failures)
        return json_path, csv_path

    def summary(self) -> str:
        c = self.counts
        lines = [
            f"npzfix {self.tool}{' (dry run)' if self.dry_run else ''}: "
            f"seen {self.seen}, updated {c[UPDATED]}"
            + (f", would update {c[WOULD_UPDATE]}" if self.dry_run else "")
            + (f", adopted {c[ADOPTED]}" if c[ADOPTED] else "")
            + f", skipped (already done) {c[SKIPPED_DONE]}, skipped (legacy flag) {c[SKIPPED_LEGACY]}, "
            f"missing source {c[MISSING]}, failed {c[FAILED]}",
            f"elapsed {self.elapsed:.2f} s, {self.files_per_s:.1f} files/s",
        ]
        if self.stopped_early:
            lines.append(f"stopped early: {self.stopped_early}")
        if self.vanished:
            lines.append(f"FAILED: {self.vanished}")
        if self.interrupted:
            lines.append(f"interrupted by {self.interrupted}: every file is either untouched or fully updated")
        for d in self.legacy[:20]:
            lines.append(f"legacy files in {d['directory']}: {d['legacy_files']} {d['decision']} ({d['why']})")
        if len(self.legacy) > 20:
            lines.append(f"  ... and {len(self.legacy) - 20} more directories (see the report file)")
        if self.drift.get("sampled"):
            lines.append(drift_line(self.drift))
        for f in self.failures[:20]:
            lines.append(f"  {f['status']}: {f['path']}: {f['reason']}")
        if len(self.failures) > 20:
            lines.append(f"  ... and {len(self.failures) - 20} more (see the report file)")
        return "\n".join(lines)


def drift_line(drift: dict[str, Any]) -> str:
    keys = "; ".join(
        f"{k} cosine min {v['min_cosine']:.4f} median {v['median_cosine']:.4f}, max error {v['max_abs_error']:.4g}"
        for k, v in drift.items()
        if isinstance(v, dict) and "min_cosine" in v
    )
    unrelated = len(drift.get("unrelated", []))
    return (
        f"drift, old vs new features of {drift['sampled']} of {drift['candidates']} files redone for another "
        f"teacher or a legacy flag: {keys}" + (f"; {unrelated} held something unrelated (cosine < 0.5)" if unrelated else "")
    )

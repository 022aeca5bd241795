"""Is a directory's cache sane? Sampled content checks and a cheap "anything left to do?" count.

Used by Dagster's asset checks and schedule, and runnable from tests; plain
functions over paths, returning plain results.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from npzfix_core import discovery, store
from npzfix_core.provenance import EdgeProvenance, FeatureProvenance, flag_set, stored_teacher
from npzfix_core.report import outcome_for


# What fixes each kind of problem (a check that fails says how to make it pass).
RESTORE = "restore this file (e.g. extract it again); npzfix never rewrites an unreadable NPZ"
RERUN = "materialize this partition again (CLI: the same npzfix command): files not done are redone"
REDO_EDGES = "materialize this partition with skip_if_processed: false (CLI: npzfix edges without --skip-if-processed)"
REDO_FEATURES = "materialize this partition with force: true (CLI: npzfix features --force)"
FIX_JSON = "fix or restore the JSON named here, then materialize this partition"


@dataclass
class CheckResult:
    checked: int = 0
    problems: list[dict[str, str]] = field(default_factory=list)  # path, problem, remedy
    legacy_flagged: int = 0  # flagged by the original tools (no provenance), content checked like any other

    @property
    def passed(self) -> bool:
        return not self.problems

    def fail(self, path: str, problem: str, remedy: str = RERUN) -> None:
        self.problems.append({"path": path, "problem": problem, "remedy": remedy})


def _read(p: str, res: CheckResult) -> dict | None:
    res.checked += 1
    try:
        return store.read_arrays(p)
    except (store.NpzError, OSError) as exc:
        res.fail(p, f"unreadable: {exc}", RESTORE)
        return None


def sample(paths: list[str], n: int, seed: int = 0) -> list[str]:
    return paths if len(paths) <= n else sorted(random.Random(seed).sample(paths, n))


def check_edges(paths: Iterable[str], kernel_size: int, json_dir: str | None = None, recompute: int = 8) -> CheckResult:
    """Keys, shapes, dtypes, 0/1 values, flag and provenance; the first ``recompute`` files are recomputed exactly."""
    from npzfix_core.edges import method_b, parse_sa1b  # OpenCV: only when edges are checked

    res = CheckResult()
    for i, p in enumerate(paths):
        if (a := _read(p, res)) is None:
            continue
        done = EdgeProvenance(kernel_size).is_done(a)
        fix = REDO_EDGES if done else RERUN  # a run skips a file flagged done: say how to make it look again
        if done and "edge_provenance" not in a:
            res.legacy_flagged += 1
        bad = False
        for key, side in (("edge_64x64", 64), ("edge_32x32", 32), ("edge_256x256", 256)):
            if key not in a:
                if key != "edge_256x256":
                    res.fail(p, f"missing {key}", fix)
                    bad = True
                continue
            v = a[key]
            if v.shape != (side, side) or v.dtype != np.uint8 or v.max(initial=0) > 1:
                want = f"uint8 0/1 ({side},{side})"
                res.fail(p, f"{key} is {v.dtype}{v.shape} with max {v.max(initial=0)}, want {want}", fix)
                bad = True
        if not done:
            res.fail(p, f"edge flag/version/provenance do not say Method B with kernel {kernel_size}", RERUN)
            bad = True
        if bad or i >= recompute:
            continue
        j = discovery.find_json(p, json_dir)
        if j is None:
            continue
        try:
            with open(j, "rb") as f:
                want = method_b(parse_sa1b(json.loads(f.read())), kernel_size)
        except Exception as exc:  # the check reports a bad source; it never crashes the step
            res.fail(p, f"cannot recompute its edges: {outcome_for(p, exc, j).reason}", FIX_JSON)
            continue
        for size in (64, 32, 256):
            key = f"edge_{size}x{size}"
            if key in a and not np.array_equal(a[key], want[size]):
                res.fail(p, f"flagged as done but {key} differs from Method B of {os.path.basename(j)}", REDO_EDGES)
    return res


def check_features(
    paths: Iterable[str], provenance: FeatureProvenance | None = None, needs_flag: bool = True
) -> CheckResult:
    """P4/P5 present, float, finite, 256 channels, P5 half of P4; IMAGE_EMB_S16 == P4; flag and same teacher."""
    res = CheckResult()
    for p in paths:
        if (a := _read(p, res)) is None:
            continue
        flagged = flag_set(a, "feature_flag")
        has_record, stored = stored_teacher(a)
        if flagged and not has_record:
            res.legacy_flagged += 1  # the original tool's work: its content is checked below like any other
        done = flagged and (not has_record or (provenance is not None and provenance.same_teacher(stored)))
        fix = REDO_FEATURES if done else RERUN
        p4, p5 = a.get("P4_S16"), a.get("P5_S32")
        if p4 is None or p5 is None:
            res.fail(p, "missing P4_S16 or P5_S32", fix)
            continue
        if p4.dtype.kind != "f" or p5.dtype.kind != "f":
            res.fail(p, f"features are {p4.dtype}/{p5.dtype}, want float", fix)
        elif not (np.isfinite(p4).all() and np.isfinite(p5).all()):
            res.fail(p, "features hold NaN or Inf", fix)
        if p4.shape[-3:-2] != (256,) or p4.shape[-2] != 2 * p5.shape[-2] or p4.shape[-1] != 2 * p5.shape[-1]:
            res.fail(p, f"shapes P4 {p4.shape} / P5 {p5.shape} are not (.,256,H,W) / (.,256,H/2,W/2)", fix)
        if "IMAGE_EMB_S16" in a and not np.array_equal(a["IMAGE_EMB_S16"].astype(np.float32), p4.astype(np.float32)):
            res.fail(p, "IMAGE_EMB_S16 disagrees with P4_S16", fix)
        if needs_flag and not flagged:
            res.fail(p, "feature_flag is not 1", RERUN)
        if provenance is not None and has_record and not provenance.same_teacher(stored):
            res.fail(p, f"written by another teacher: {stored.describe() if stored else 'unreadable provenance'}")
    return res


def count_not_done(paths: Iterable[str], features: bool = True, edges: bool = True, stop_at: int | None = 1) -> int:
    """Files lacking a feature or edge flag (cheap flag reads); stops early for schedules.

    Unreadable files are not counted: a rerun cannot fix them (they fail, visibly, in the run that meets
    them), and counting them would re-request the same futile run every day.
    """
    n = 0
    for p in paths:
        try:
            f = store.read_flags(p, ("feature_flag", "edge_flag"))
        except (store.NpzError, OSError):
            continue
        else:
            if (features and not flag_set(f, "feature_flag")) or (edges and not flag_set(f, "edge_flag")):
                n += 1
        if stop_at is not None and n >= stop_at:
            break
    return n

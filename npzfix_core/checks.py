"""Is a directory's cache sane? Sampled content checks and a cheap "anything left to do?" count.

Used by Dagster's asset checks and schedule, and runnable from tests; plain
functions over paths, returning plain results.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from typing import Collection, Iterable

import numpy as np

from npzfix_core import discovery, edge_rules, outputs, store
from npzfix_core.provenance import (
    EDGE_KEYS,
    FEATURE_KEYS,
    EdgeProvenance,
    FeatureProvenance,
    State,
    flag_set,
    stored_record,
    stored_teacher,
    unchanged,
)
from npzfix_core.report import outcome_for
from npzfix_core.settings import DEFAULT_MAX_PIXELS
from npzfix_core.verify import Summary, Tolerance


# What fixes each kind of problem (a check that fails says how to make it pass).
RESTORE = "restore this file (e.g. extract it again); npzfix never rewrites an unreadable NPZ"
RERUN = "materialize this partition again (CLI: the same npzfix command): files not done are redone"
REDO_EDGES = "materialize this partition with skip_if_processed: false (CLI: npzfix edges without --skip-if-processed)"
REDO_FEATURES = "materialize this partition with force: true (CLI: npzfix features --force)"
REDO_LEGACY = (
    "flagged by the original tool: materialize this partition with legacy: verify (CLI: npzfix features "
    "--legacy verify), which redoes its legacy files when a sample does not match"
)
RESTORE_IMAGE = "restore the image (beside the NPZ or in its parent) to verify this file by value"
FIX_JSON = "fix or restore the JSON named here, then materialize this partition"
CHANGED = "their CRC-32 is not the one its provenance sealed: another tool rewrote them"



@dataclass
class CheckResult:
    checked: int = 0
    problems: list[dict[str, str]] = field(default_factory=list)  # path, problem, remedy
    legacy_flagged: int = 0  # flagged by the original tools (no provenance), content checked like any other
    carried: dict[str, int] = field(default_factory=dict)  # pickled member -> files holding it: carried, not read
    unverifiable: int = 0  # sampled for a recompute, but its image is missing or unreadable
    verification: Summary | None = None  # what the recompute measured (None: no file was recomputed)

    @property
    def passed(self) -> bool:
        return not self.problems

    def fail(self, path: str, problem: str, remedy: str = RERUN) -> None:
        self.problems.append({"path": path, "problem": problem, "remedy": remedy})


def _read(p: str, res: CheckResult) -> dict | None:
    res.checked += 1
    try:
        a = store.read_readable(p)
    except (store.NpzError, OSError) as exc:
        res.fail(p, f"unreadable: {exc}", RESTORE)
        return None
    for key in a.carried:
        res.carried[key] = res.carried.get(key, 0) + 1
    return a


def sample(paths: list[str], n: int, seed: int = 0) -> list[str]:
    return paths if len(paths) <= n else sorted(random.Random(seed).sample(paths, n))


def check_edges(
    paths: Iterable[str],
    kernel_size: int | None,
    json_dir: str | None = None,
    recompute: int = 8,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    rule: str = edge_rules.DEFAULT,
) -> CheckResult:
    """Keys, shapes, dtypes, 0/1 values, flag and provenance; the first ``recompute`` files are recomputed exactly
    by ``rule`` (``edge_rules``) at ``kernel_size`` (None: the rule's default)."""
    from npzfix_core.edges import parse_sa1b  # OpenCV: only when edges are checked

    want_prov = EdgeProvenance.of(rule, kernel_size)
    kernel_size, edge_rule = want_prov.kernel_size, edge_rules.get(rule)
    res = CheckResult()
    for i, p in enumerate(paths):
        if (a := _read(p, res)) is None:
            continue
        done = want_prov.is_done(a)
        fix = REDO_EDGES if done else RERUN  # a run skips a file flagged done: say how to make it look again
        if done and "edge_provenance" not in a:
            res.legacy_flagged += 1
        bad = False
        for side in outputs.EDGE_SIZES:
            key = outputs.edge_key(side)
            if key not in a:
                if side != outputs.EDGE_SIZES[0]:  # edge_256x256 is optional, as the original writes it
                    res.fail(p, f"missing {key}", fix)
                    bad = True
                continue
            v = a[key]
            if v.shape != (side, side) or v.dtype != np.uint8 or v.max(initial=0) > 1:
                want = f"uint8 0/1 ({side},{side})"
                res.fail(p, f"{key} is {v.dtype}{v.shape} with max {v.max(initial=0)}, want {want}", fix)
                bad = True
        if not done and EdgeProvenance.stored(a) == want_prov:
            res.fail(p, f"edge maps changed since npzfix wrote them ({CHANGED})", RERUN)
            bad = True
        elif not done:
            res.fail(p, f"edge flag/version/provenance do not say {want_prov.title()}", RERUN)
            bad = True
        if bad or i >= recompute:
            continue
        j = discovery.find_json(p, json_dir)
        if j is None:
            continue
        try:
            with open(j, "rb") as f:
                want = edge_rule.maps(parse_sa1b(json.loads(f.read()), max_pixels), kernel_size, outputs.EDGE_SIZES)
        except Exception as exc:  # the check reports a bad source; it never crashes the step
            res.fail(p, f"cannot recompute its edges: {outcome_for(p, exc, j).reason}", FIX_JSON)
            continue
        for size in outputs.EDGE_SIZES:
            key = outputs.edge_key(size)
            if key in a and not np.array_equal(a[key], want[size]):
                res.fail(p, f"flagged as done but {key} differs from {edge_rule.title} of {os.path.basename(j)}", REDO_EDGES)
    return res


def check_features(
    paths: Iterable[str],
    teacher=None,
    *,
    provenance: FeatureProvenance | None = None,
    needs_flag: bool = True,
    verify: Collection[str] | None = None,
    tolerance: Tolerance = Tolerance(),
    image_dir: str | None = None,
) -> CheckResult:
    """Structure, flag and provenance of every file; then the values: files in ``verify`` (all, when None) are
    recomputed with ``teacher`` (a ``LazyTeacher``, built only if a file needs it) and compared.

    Without a teacher only structure is checked (``provenance`` then names the teacher files should carry).
    A file whose image is missing is "not verifiable": a problem, never a pass.
    """
    from npzfix_core import verify as by_value

    res = CheckResult()
    if teacher is not None:
        provenance = teacher.provenance
    resolution = provenance.resolution if provenance is not None else None
    queued: list[tuple[str, str | None]] = []
    held: dict[str, dict] = {}
    remedy: dict[str, str] = {}
    for p in paths:
        if (a := _read(p, res)) is None:
            continue
        flagged = flag_set(a, "feature_flag")
        has_record, stored = stored_teacher(a)
        legacy = flagged and not has_record
        res.legacy_flagged += legacy  # the original tool's work: checked below like any other
        # the runners' rule; without a teacher to compare with, a flag (legacy or not) is all there is
        done = provenance.state(a) in (State.DONE, State.LEGACY) if provenance is not None else flagged
        fix = REDO_LEGACY if legacy else REDO_FEATURES if done else RERUN
        problems = by_value.structure_problems(a, resolution)
        for problem in problems:
            res.fail(p, problem, fix)
        if needs_flag and not flagged:
            res.fail(p, "feature_flag is not 1", RERUN)
            problems.append("not flagged")
        if provenance is not None and has_record and not provenance.same_teacher(stored):
            res.fail(p, f"written by another teacher: {stored.describe() if stored else 'unreadable provenance'}")
            problems.append("another teacher")
        elif has_record and not problems and not unchanged(stored_record(a, "feature_provenance"), a):
            res.fail(p, f"features changed since npzfix wrote them ({CHANGED})", RERUN)
            problems.append("changed")
        if teacher is not None and not problems and (verify is None or p in verify):
            queued.append((p, discovery.find_image(p, image_dir)))
            held[p] = {k: a[k] for k in outputs.feature_names() if k in a}
            remedy[p] = fix
    if queued:
        verdicts, res.verification = by_value.timed_verify(queued, teacher, tolerance, held)
        for v in verdicts:
            if v.status == by_value.UNVERIFIABLE:
                res.unverifiable += 1
                res.fail(v.path, f"not verifiable: {v.reason}", RESTORE_IMAGE)
            elif v.status != by_value.MATCH:
                res.fail(v.path, v.reason, remedy[v.path] if v.status == by_value.MISMATCH else RESTORE)
    return res


def count_pending(
    paths: Iterable[str],
    features: FeatureProvenance | None = None,
    edges: EdgeProvenance | None = None,
    stop_at: int | None = 1,
) -> int:
    """Files a default run of the given teacher / edge kernel would rewrite (``State.pending``: not flagged,
    or flagged by another teacher, rule or kernel), from cheap flag reads; stops early for schedules.

    Unreadable files are not counted: a rerun cannot fix them (they fail, visibly, in the run that meets
    them), and counting them would re-request the same futile run every day. Legacy files are not pending:
    a default run leaves them to ``--legacy``.
    """
    keys = (FEATURE_KEYS if features else ()) + (EDGE_KEYS if edges else ())
    n = 0
    for p in paths:
        try:
            f = store.read_flags(p, keys)
        except (store.NpzError, OSError):
            continue
        if any(prov is not None and prov.state(f).pending for prov in (features, edges)):
            n += 1
        if stop_at is not None and n >= stop_at:
            break
    return n

"""Legacy caches verified, then adopted or redone (``--legacy verify``).

A file flagged by the original tool carries no provenance: nobody can say which teacher wrote it. Per
directory (one extraction run of the original tool), a sample of its legacy files is recomputed and compared;
if every sampled file matches, the directory's legacy files are stamped with this teacher's provenance and
the evidence (k of N, tolerance) without recomputing them; if any does not, every legacy file of the
directory is redone. A stamp is an atomic in-place update adding one member: P4/P5 stay byte for byte, and a
killed run leaves each file old or fully stamped. A file is never stamped unless it passes the structural
check (finite, the teacher's size, not constant) and is still, under its lock, the legacy file that was
examined.
"""

from __future__ import annotations

import os
import random
import time
import zlib
from dataclasses import dataclass, field

from npzfix_core import outputs, store, verify
from npzfix_core.discovery import WorkItem
from npzfix_core.provenance import FEATURE_KEYS, FeatureProvenance, FeatureState
from npzfix_core.report import SKIPPED_LEGACY, Outcome

SKIP, VERIFY, REDO = "skip", "verify", "redo"
POLICIES = (SKIP, VERIFY, REDO)


class NotAdoptable(Exception):
    """This legacy file cannot be stamped as it is; the reason says what to do instead."""


@dataclass
class Decision:
    """What one directory's sample decided: a record for the report, and the files to adopt or redo."""

    record: dict
    adopt: list[WorkItem] = field(default_factory=list)
    redo: list[WorkItem] = field(default_factory=list)
    left: list[Outcome] = field(default_factory=list)  # legacy files left as they are, with the reason


def decide(
    directory: str,
    items: list[WorkItem],
    teacher,
    tolerance: verify.Tolerance,
    sample_size: int,
    dry_run: bool = False,
) -> Decision:
    """Recompute a sample of a directory's legacy files (those with an image) and decide for all of them."""
    record = {"directory": directory, "legacy_files": len(items), "sampled": 0, "matched": 0}
    candidates = [it for it in items if it.source is not None]
    if dry_run or not candidates:
        why = "dry run: not verified" if dry_run else "no legacy file has an image to verify a sample with"
        record.update(decision="left as they are", why=why)
        return Decision(record, left=[Outcome(it.npz, SKIPPED_LEGACY, f"legacy verify: {why}") for it in items])
    rng = random.Random(zlib.crc32(os.fsencode(directory)))
    sample = candidates if len(candidates) <= sample_size else rng.sample(candidates, sample_size)
    t = time.perf_counter()
    verdicts = verify.verify([(it.npz, it.source) for it in sample], teacher, tolerance)
    summary = verify.Summary().add(verdicts)
    bad = [v for v in verdicts if v.status != verify.MATCH]
    record.update(
        sampled=len(sample),
        matched=summary.matched,
        min_cosine=summary.min_cosine,
        seconds=round(time.perf_counter() - t, 3),
    )
    if not bad:
        record.update(
            decision="adopted",
            why=f"{len(sample)} of {len(items)} recomputed, every one matched ({tolerance.describe()})",
        )
        evidence = {
            "verified": len(sample),
            "of": len(items),
            "sample": sorted(os.path.basename(it.npz) for it in sample),
            "tolerance": tolerance.as_dict(),
            "min_cosine": summary.min_cosine,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        record["evidence"] = evidence
        return Decision(record, adopt=list(items))
    first = bad[0]
    record.update(
        decision="redone",
        why=f"{len(bad)} of {len(sample)} sampled did not match: {os.path.basename(first.path)}: {first.reason}",
    )
    failed = {v.path for v in bad}  # redone first: a budget that stops the run spends itself on known-bad files
    return Decision(record, redo=sorted(items, key=lambda it: it.npz not in failed))


def adoptable(npz: str, prov: FeatureProvenance) -> tuple[int, int, int]:
    """The file's identity (inode, size, mtime) if it can be stamped as it is; raises NotAdoptable otherwise."""
    st = os.stat(npz)
    if prov.state(store.read_flags(npz, FEATURE_KEYS)) is not FeatureState.LEGACY:
        raise NotAdoptable("no longer a legacy file")
    problems = verify.structure_problems(store.read_arrays(npz, outputs.feature_names()), prov.resolution)
    if problems:
        raise NotAdoptable("; ".join(problems))
    return st.st_ino, st.st_size, st.st_mtime_ns


def adopt(
    npz: str,
    prov: FeatureProvenance,
    mode: str,
    evidence: dict,
    seen: tuple[int, int, int],
    durable: bool = True,
    lock_timeout_s: float = store.DEFAULT_LOCK_TIMEOUT_S,
) -> store.UpdateResult:
    """Stamp provenance (with the evidence) onto a legacy file examined as ``seen``; nothing else changes."""
    def prepare(existing):
        st = os.stat(npz)
        if (st.st_ino, st.st_size, st.st_mtime_ns) != seen:
            raise NotAdoptable("changed since it was examined: left as it is")
        if prov.state(store.read_flags(npz, FEATURE_KEYS)) is not FeatureState.LEGACY:
            raise NotAdoptable("no longer a legacy file")
        return {}

    return store.update(
        npz,
        prepare=prepare,
        remove={"feature_provenance"},
        seal=lambda crcs: {"feature_provenance": prov.record(mode, crcs, adopted=evidence)},
        durable=durable,
        lock_timeout_s=lock_timeout_s,
    )

"""Names and records shared by a writer and a reader that run at different times (often different releases):
asset names, the metadata keys the schedule reads back, the sensor cursor. One definition each, so that a
rename is a change here, and a stored record of the previous release still reads (``tests/dagster/test_contracts.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Optional

# Assets: the three caches and their external sources.
SA1B_FEATURES = "sa1b_features_fixed"
TRAIN_TEST_FEATURES = "train_test_features_fixed"
EDGES = "edges_B_v1"
FEATURE_ASSETS = frozenset({SA1B_FEATURES, TRAIN_TEST_FEATURES})
SA1B_SHARDS = "sa1b_training_shards"  # downstream: the tar shards the student reads
TRAIN_TEST_SHARDS = "train_test_training_shards"
SA1B_NPZ_FILES = "sa1b_npz_files"
TRAIN_TEST_NPZ_FILES = "train_test_npz_files"


class Md:
    """Materialization metadata keys that something other than a person reads back (the daily re-check)."""

    PROVENANCE = "provenance"  # JSON: the teacher (features) or the rule and kernel (edges) that wrote the run
    STOPPED_EARLY = "stopped_early"  # text, present only when max_files stopped the run
    DIR_MTIME_NS = "dir_mtime_ns"  # text: the directory's mtime as the run left it
    NPZ_SIGNATURE = "npz_signature"  # text "<count>:<digest>" of the directory's NPZ names


@dataclass(frozen=True)
class DirEntry:
    """The sensor's memory of one directory under the root."""

    m: int  # mtime (ns) when it was last listed
    sub: tuple[str, ...] = ()  # subdirectories, relative to the root
    sig: Optional[str] = None  # "<count>:<digest>" of its NPZ names; None: it holds no NPZ (no partition)
    req: Optional[str] = None  # the signature a run was last requested for

    def requested(self) -> DirEntry:
        return replace(self, req=self.sig)

    def to_json(self) -> dict:
        d: dict = {"m": self.m, "sub": list(self.sub)}
        if self.sig is not None:
            d.update(sig=self.sig, req=self.req)
        return d

    @classmethod
    def from_json(cls, d: dict) -> DirEntry:
        return cls(int(d["m"]), tuple(d.get("sub", ())), d.get("sig"), d.get("req"))


@dataclass(frozen=True)
class SensorCursor:
    """What a new-directories sensor keeps between ticks: its root and every directory's entry. The JSON is
    the one the release before this class wrote (``{"root": ..., "dirs": {rel: {m, sub, sig, req}}}``)."""

    root: Optional[str] = None
    dirs: dict[str, DirEntry] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"root": self.root, "dirs": {rel: e.to_json() for rel, e in self.dirs.items()}})

    @classmethod
    def from_json(cls, text: Optional[str], root: str) -> SensorCursor:
        """The stored cursor, or an empty one for ``root`` (none yet, another root, or unreadable)."""
        try:
            raw = json.loads(text) if text else {}
            if raw.get("root") != root:
                return cls(root)
            return cls(root, {rel: DirEntry.from_json(e) for rel, e in raw.get("dirs", {}).items()})
        except (ValueError, TypeError, KeyError, AttributeError):
            return cls(root)  # a cursor we cannot read costs one full listing, never a failed tick

"""What wrote a file's features or edges, and when a file counts as done: one place for both runners and checks.

A flag alone cannot tell which teacher or rule wrote a file, so npzfix records provenance beside it
(a JSON string member). Files flagged by the original tools carry none; design §6 settles them: an
``edge_version='B_v1'`` flag counts as Method B with kernel 3; a ``feature_flag`` is "legacy": skipped,
counted apart, redone with ``--force`` or ``--legacy redo``, or adopted after a verified sample with
``--legacy verify`` (its record then says so: ``adopted``).
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import numpy as np

from npzfix_core import __version__, edge_rules, outputs

TOOL = f"npzfix {__version__}"
EDGE_RULE = edge_rules.DEFAULT
EDGE_VERSION = edge_rules.get(EDGE_RULE).version
EDGE_KEYS = outputs.EDGE_FLAGS
FEATURE_KEYS = outputs.FEATURE_FLAGS
# What each record vouches for (``outputs``): their CRC-32s are sealed into it, so a file whose features or edges
# another tool rewrote (vfmkd's in-place tool keeps our record while writing its teacher's P4) is not "done" any more.


def seal(crcs: Mapping[str, int], keys: tuple[str, ...]) -> dict[str, int]:
    """The ``crc32`` entry of a record: the CRC-32 of each vouched-for member the file holds."""
    return {k: int(crcs[k]) for k in keys if k in crcs}


def unchanged(record: Mapping[str, Any] | None, flags: Mapping[str, np.ndarray]) -> bool:
    """False when the record seals members whose CRC-32 (from the zip directory, carried by ``store.Flags``) is
    not what it sealed, or that are gone; True for records without a seal (earlier releases) or flags read
    without CRCs."""
    sealed = record.get("crc32") if isinstance(record, Mapping) else None
    crcs = getattr(flags, "crcs", None)
    if not isinstance(sealed, Mapping) or crcs is None:
        return True
    return all(crcs.get(k) == v for k, v in sealed.items())


def flag_set(flags: Mapping[str, np.ndarray], key: str) -> bool:
    """A flag reads as set only if it is one number equal to 1; any other shape or type means "not done"
    (a malformed flag must not fail every ``--skip-if-processed`` run)."""
    value = flags.get(key)
    if value is None:
        return False
    a = np.asarray(value)
    if a.size != 1 or a.dtype.kind not in "biuf":
        return False
    return a.reshape(()).item() == 1


def stored_record(flags: Mapping[str, np.ndarray], key: str) -> dict | None:
    """The provenance record as a dict; None when absent, {} when unreadable (then it matches nothing)."""
    if key not in flags:
        return None
    try:
        value = json.loads(str(np.asarray(flags[key]).reshape(-1)[0]) if np.asarray(flags[key]).size else "")
    except (ValueError, IndexError):
        return {}
    return value if isinstance(value, dict) else {}


class State(enum.Enum):
    """Where a file stands for one provenance (a teacher, an edge rule+kernel): the one "done" rule of the
    runners, the checks and the schedule."""

    DONE = "done"  # flagged, by this teacher / rule and kernel
    LEGACY = "legacy"  # features flagged by the original tool, no provenance (skipped unless --legacy says)
    STALE = "stale"  # flagged, by another teacher / rule or kernel: a run redoes it
    TODO = "todo"  # not flagged

    @property
    def pending(self) -> bool:
        """A default run would rewrite the file (legacy files are left to ``--legacy``)."""
        return self in (State.STALE, State.TODO)


FeatureState = State  # the name the features side has used since provenance existed


@dataclass(frozen=True)
class EdgeProvenance:
    kernel_size: int
    rule: str = EDGE_RULE
    version: str = EDGE_VERSION

    @classmethod
    def of(cls, rule: str, kernel_size: int | None = None) -> EdgeProvenance:
        """What a run of ``rule`` (``edge_rules``) at ``kernel_size`` (None: the rule's default) writes."""
        r = edge_rules.get(rule)
        return cls(r.default_kernel if kernel_size is None else kernel_size, r.name, r.version)

    def arrays(self, crcs: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
        """Flag, version and provenance members, as written beside the edge maps (whose CRCs ``crcs`` gives)."""
        record = {"rule": self.rule, "version": self.version, "kernel_size": self.kernel_size, "tool": TOOL}
        if crcs is not None:
            record["crc32"] = seal(crcs, outputs.EDGE_MAPS)
        return {
            "edge_flag": np.array(1, dtype=np.uint8),
            "edge_version": np.array(self.version),
            "edge_provenance": np.array(json.dumps(record, sort_keys=True)),
        }

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tool": TOOL}

    @classmethod
    def stored(cls, flags: Mapping[str, np.ndarray]) -> EdgeProvenance | None:
        """What a flagged file says wrote its edges (an original tool's flag: the rule and kernel ``edge_rules``
        says it counts as, B_v1 -> Method B kernel 3); None when not flagged or unreadable."""
        if not flag_set(flags, "edge_flag"):
            return None
        version = str(flags.get("edge_version", ""))
        record = stored_record(flags, "edge_provenance")
        if record is None:
            legacy = edge_rules.legacy_of(version)
            return cls(legacy[1], legacy[0].name, version) if legacy else None
        if str(record.get("version", version)) != version:
            return None  # the version member and the record disagree: another writer was here
        return cls.from_dict({"version": version, **record})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> EdgeProvenance | None:
        """From a record or recorded metadata (``as_dict``); None when it does not name a rule and kernel."""
        if not isinstance(d, Mapping) or not isinstance(d.get("kernel_size"), int) or not isinstance(d.get("rule"), str):
            return None
        rule = edge_rules.RULES.get(d["rule"])
        return cls(d["kernel_size"], d["rule"], str(d.get("version", rule.version if rule else "")))

    def state(self, flags: Mapping[str, np.ndarray]) -> State:
        """A legacy ``B_v1`` flag reads as kernel 3 (design §6): DONE for kernel 3, STALE for another, or when
        the edge maps are not those the record sealed."""
        if not flag_set(flags, "edge_flag"):
            return State.TODO
        if EdgeProvenance.stored(flags) != self or not unchanged(stored_record(flags, "edge_provenance"), flags):
            return State.STALE
        return State.DONE

    def is_done(self, flags: Mapping[str, np.ndarray]) -> bool:
        return self.state(flags) is State.DONE

    def describe(self) -> str:
        return f"{self.rule} {self.version} kernel {self.kernel_size}"

    def title(self) -> str:
        rule = edge_rules.RULES.get(self.rule)
        return f"{rule.title if rule else self.rule} with kernel {self.kernel_size}"


TEACHER_FIELDS = ("teacher", "config", "weights", "precision", "resolution", "scalp")


@dataclass(frozen=True)
class FeatureProvenance:
    """Identifies the teacher that wrote a file's features; computed without torch."""

    config: str
    weights: str  # "sha256:<16 hex>" of the checkpoint, or "random-init:<seed>"
    precision: str
    resolution: int
    scalp: int = 0
    teacher: str = "sam2"

    @property
    def random_init(self) -> bool:
        return self.weights.startswith("random-init")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def record(self, mode: str, crcs: Mapping[str, int] | None = None, **extra: Any) -> np.ndarray:
        """The ``feature_provenance`` member: this teacher, the tool and the mode that wrote the file, the CRCs
        of the features it vouches for (plus, for an adopted legacy file, the evidence it was adopted on)."""
        sealed = {"crc32": seal(crcs, outputs.feature_names())} if crcs is not None else {}
        record = {**self.as_dict(), "tool": TOOL, "mode": mode, **sealed, **extra}
        return np.array(json.dumps(record, sort_keys=True))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> FeatureProvenance | None:
        """From a stored record or recorded metadata; None when it does not name a teacher."""
        if not isinstance(d, Mapping) or not all(k in d for k in TEACHER_FIELDS):
            return None
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in d.items() if k in known})
        except TypeError:
            return None

    def same_teacher(self, other: FeatureProvenance | None) -> bool:
        return other is not None and all(getattr(self, k) == getattr(other, k) for k in TEACHER_FIELDS)

    def state(self, flags: Mapping[str, np.ndarray]) -> State:
        if not flag_set(flags, "feature_flag"):
            return State.TODO
        record = stored_record(flags, "feature_provenance")
        if record is None:
            return State.LEGACY
        if not self.same_teacher(FeatureProvenance.from_dict(record)) or not unchanged(record, flags):
            return State.STALE
        sealed = record.get("crc32")
        if isinstance(sealed, Mapping) and not all(k in sealed for k in outputs.required_names()):
            return State.STALE  # written before an output was added to the table: a run adds it
        return State.DONE

    def describe(self) -> str:
        return f"{self.config} {self.weights} {self.precision} @{self.resolution}"


def stored_teacher(flags: Mapping[str, np.ndarray]) -> tuple[bool, FeatureProvenance | None]:
    """(has a provenance record, the teacher it names or None when unreadable)."""
    record = stored_record(flags, "feature_provenance")
    return record is not None, FeatureProvenance.from_dict(record)

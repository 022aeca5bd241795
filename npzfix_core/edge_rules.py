"""The edge rules npzfix can write: name -> how to compute the maps, the version string flagged beside them, the
flags of the original tools it accepts as its own, and its default kernel.

A rule is chosen per run (``--edge-rule``, run config ``rule``, ``NPZFIX_EDGE_RULE``); provenance records its name
and kernel, so changing either redoes every file, and the Dagster asset's code version names both. Adding a rule
is one entry in ``RULES`` (plus its tests): everything else looks it up here by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np


def _method_b(ann, kernel_size: int, sizes: tuple[int, ...]) -> dict[int, np.ndarray]:
    from npzfix_core.edges import method_b  # OpenCV: imported in the worker process that needs it

    return method_b(ann, kernel_size, sizes)


@dataclass(frozen=True)
class EdgeRule:
    name: str  # recorded in edge_provenance
    version: str  # written as edge_version
    title: str  # how messages name it
    compute: Callable[..., dict[int, np.ndarray]]  # (ImageAnnotations, kernel_size, sizes) -> {size: uint8 0/1}
    default_kernel: int = 3
    # edge_version strings written without provenance (the original tools) that count as this rule, at a kernel
    legacy: Mapping[str, int] = field(default_factory=dict)

    def maps(self, ann, kernel_size: int, sizes: tuple[int, ...]) -> dict[int, np.ndarray]:
        return self.compute(ann, kernel_size, sizes)


RULES: dict[str, EdgeRule] = {
    "method_b": EdgeRule(
        "method_b", "B_v1", "Method B", _method_b, default_kernel=3, legacy={"B_v1": 3}  # the original's default
    ),
}
DEFAULT = "method_b"


class UnknownRule(ValueError):
    pass


def get(name: str) -> EdgeRule:
    try:
        return RULES[name]
    except KeyError:
        raise UnknownRule(f"unknown edge rule {name!r}: one of {', '.join(sorted(RULES))}") from None


def legacy_of(version: str) -> tuple[EdgeRule, int] | None:
    """The rule (and kernel) an original tool's flag with this ``edge_version`` and no provenance counts as."""
    for rule in RULES.values():
        if version in rule.legacy:
            return rule, rule.legacy[version]
    return None

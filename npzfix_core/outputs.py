"""What a cache holds that npzfix owns: one row per feature member, the edge maps, and the flag members.

Every part of the feature path iterates ``FEATURES`` at call time — the teacher returns one array per computed
row, the writer merges every row, verify, drift, the checks, synth and the data version read them — so adding
an output (P3, which SAM2's FPN also gives) is one row here. Code reads ``outputs.FEATURES`` through the module,
never a copy taken at import, so a test can add a row for a run.

=============  =========  ======  ==================  =======  =====================================
key            FPN level  stride  shape at input R    dtype    written
=============  =========  ======  ==================  =======  =====================================
P4_S16         2          16      (1, 256, R/16, R/16)  float32  always
P5_S32         3          32      (1, 256, R/32, R/32)  float32  always
IMAGE_EMB_S16  = P4_S16   16      as P4_S16           float32  where the file has it; sample lists
=============  =========  ======  ==================  =======  =====================================

``dtype`` is what a new member gets; an existing member keeps its own float dtype (``--store-dtype``
overrides both).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FeatureKey:
    name: str
    level: int | None  # index into SAM2's ``backbone_fpn`` (0 = stride 4); None: a mirror of another row
    stride: int
    channels: int = 256
    dtype: str = "float32"
    mirror_of: str | None = None  # the computed key it equals (IMAGE_EMB_S16 = P4_S16, as vfmkd writes it)
    always: bool = True  # False: written only where the file already holds it, and by sample-list runs

    @property
    def source(self) -> str:
        """The computed key whose array this member holds."""
        return self.mirror_of or self.name

    def shape(self, resolution: int) -> tuple[int, int, int, int]:
        side = resolution // self.stride
        return (1, self.channels, side, side)


FEATURES: tuple[FeatureKey, ...] = (
    FeatureKey("P4_S16", level=2, stride=16),
    FeatureKey("P5_S32", level=3, stride=32),
    FeatureKey("IMAGE_EMB_S16", level=None, stride=16, mirror_of="P4_S16", always=False),
)


def features() -> tuple[FeatureKey, ...]:
    return FEATURES


def computed() -> tuple[FeatureKey, ...]:
    """The rows the teacher computes (one array each); mirrors are copies of one of them."""
    return tuple(k for k in FEATURES if k.mirror_of is None)


def feature_names() -> tuple[str, ...]:
    return tuple(k.name for k in FEATURES)


def computed_names() -> tuple[str, ...]:
    return tuple(k.name for k in computed())


def required_names() -> tuple[str, ...]:
    """Members every file npzfix vouches for holds."""
    return tuple(k.name for k in FEATURES if k.always)


# Members beside the features and edges that say who wrote them (flag, version string, provenance record).
FEATURE_FLAGS = ("feature_flag", "feature_provenance")
EDGE_FLAGS = ("edge_flag", "edge_version", "edge_provenance")
EDGE_SIZES = (256, 64, 32)  # edge_256x256 is written where the file has it; 64 and 32 always


def edge_key(size: int) -> str:
    return f"edge_{size}x{size}"


EDGE_MAPS = tuple(edge_key(s) for s in EDGE_SIZES)

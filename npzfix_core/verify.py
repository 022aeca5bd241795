"""Features verified by value: a file's P4/P5 recomputed with the teacher, exactly as a run computes them, and
compared with what the file stores. A flag says who claims to have written a file; this says whether the
numbers are the teacher's.

Tolerance, measured (``benchmarks/bench_verify.py``; random-init Hiera-tiny at 256 and 1024, Hiera-B+ at
512, on this CPU), as ``1 - cosine`` and max abs error over max |teacher|:

======================================  ==================  =====================
case                                     1 - cosine          max err / max teacher
======================================  ==================  =====================
same teacher fp32, batch 6 vs 1          0 .. 1.4e-13        0 .. 9.6e-7
float16-stored cache of fp32 features    2.1e-8 .. 2.2e-8    2.4e-4 .. 3.4e-4
bf16 vs fp32                             4.3e-5 .. 7.6e-5    0.0097 .. 0.016
another image of the shard               0.15 .. 0.51        0.70 .. 1.4
the same image read as BGR               0.10 .. 0.32        0.61 .. 1.5
mirrored image                           0.13 .. 0.46        0.60 .. 1.3
another checkpoint (seed 1 vs 0)         0.86 .. 1.0         1.3 .. 1.8
N(0,1) noise                             0.98 .. 1.0         1.6 .. 3.1
======================================  ==================  =====================

Hence ``cosine >= 0.999`` and ``max error <= 0.1 x max |teacher|`` per key: 13x / 6x the measured bf16
distance (a trained checkpoint at 1024 may lose more to bf16 than these random ones; TF32 convolutions on a GPU lose
~1e-3 relative), and >= 100x / 6x below every kind of wrong feature measured. The max-error bound catches what a
cosine over 262,144 values hides: one channel zeroed or a block of garbage.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Iterable, Mapping

import numpy as np

from npzfix_core import outputs

MATCH, MISMATCH, UNVERIFIABLE, BROKEN = "match", "mismatch", "not_verifiable", "broken"


@dataclass(frozen=True)
class Tolerance:
    min_cosine: float = 0.999
    max_rel_error: float = 0.1  # max |stored - teacher| / max |teacher|

    def validate(self) -> None:
        if not (-1.0 <= self.min_cosine <= 1.0) or not self.max_rel_error >= 0:
            raise ValueError("--min-cosine must be in [-1, 1] and --max-rel-error >= 0")

    def accepts(self, m: "KeyMatch") -> bool:
        return m.cosine >= self.min_cosine and m.rel_error <= self.max_rel_error

    def describe(self) -> str:
        return f"cosine >= {self.min_cosine:g}, max error <= {self.max_rel_error:g} x max |teacher|"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class KeyMatch:
    key: str
    cosine: float
    max_abs_error: float
    rel_error: float

    def describe(self) -> str:
        return f"{self.key} cosine {self.cosine:.6f}, max abs error {self.max_abs_error:.4g} ({self.rel_error:.3g} x max)"


def compare(key: str, stored: np.ndarray, fresh: np.ndarray) -> KeyMatch:
    """Cosine and max error of two arrays of the same size (shapes may differ: a cache may store (256,H,W))."""
    a = np.asarray(stored, dtype=np.float64).reshape(-1)
    b = np.asarray(fresh, dtype=np.float64).reshape(-1)
    if a.size != b.size:
        raise ValueError(f"{key}: {a.size} stored values, the teacher gives {b.size}")
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    cosine = float(a @ b) / (na * nb) if na and nb else (1.0 if na == nb else 0.0)
    err = float(np.abs(a - b).max(initial=0.0))
    scale = float(np.abs(b).max(initial=0.0))
    rel = err / scale if scale else (0.0 if err == 0 else math.inf)
    return KeyMatch(key, cosine if math.isfinite(cosine) else -1.0, err, rel)


def expected_sizes(resolution: int) -> dict[str, int]:
    return {k.name: int(np.prod(k.shape(resolution))) for k in outputs.features()}


def structure_problems(arrays: Mapping[str, np.ndarray], resolution: int | None = None) -> list[str]:
    """What makes stored features unusable whatever their values: absent, not float, not finite, constant, not
    (.,C,H,W) at the row's stride (all rows of one input size), not the size the teacher gives at ``resolution``,
    a mirror (IMAGE_EMB_S16) that is not its source (P4)."""
    keys = outputs.computed()
    absent = [k.name for k in keys if arrays.get(k.name) is None]
    if absent:
        return [f"missing {absent[0]}"]
    got = {k.name: arrays[k.name] for k in keys}
    if any(v.dtype.kind != "f" for v in got.values()):
        return [f"features are {'/'.join(str(v.dtype) for v in got.values())}, want float"]
    out = []
    sides = {(v.shape[-2] * k.stride, v.shape[-1] * k.stride) if v.ndim >= 3 else None for k, v in zip(keys, got.values())}
    if len(sides) != 1 or None in sides or any(v.shape[-3] != k.channels for k, v in zip(keys, got.values())):
        shapes = " / ".join(f"{k.name} {got[k.name].shape}" for k in keys)
        want = " / ".join(f"(.,{k.channels},R/{k.stride},R/{k.stride})" for k in keys)
        out.append(f"shapes {shapes} are not {want}")
    if resolution:
        for key, want in expected_sizes(resolution).items():
            if key in arrays and arrays[key].size != want:
                out.append(
                    f"{key} holds {arrays[key].size} values, the teacher at {resolution} gives {want}: "
                    "written at another resolution?"
                )
    for key, v in got.items():
        if not np.isfinite(v).all():
            out.append(f"{key} holds NaN or Inf")
        elif v.size and v.max() == v.min():
            out.append(f"{key} is constant ({v.reshape(-1)[0]:g})")
    for k in outputs.features():
        if k.mirror_of and k.name in arrays:
            if not np.array_equal(arrays[k.name].astype(np.float32), got[k.mirror_of].astype(np.float32)):
                out.append(f"{k.name} disagrees with {k.mirror_of}")
    return out


def encode_images(teacher, images: list[np.ndarray], batch_size: int = 8) -> list[dict[str, np.ndarray]]:
    """The teacher's arrays per decoded image ({key: (1, C, H, W)}), as a run computes them: the same
    preprocessing on the teacher's device, the same ``Teacher.encode`` (resolution, precision), in batches."""
    from npzfix_core.images import preprocess

    out = []
    for i in range(0, len(images), batch_size):
        got = teacher.encode(preprocess(images[i : i + batch_size], teacher.resolution, teacher.device))
        got = {k: v.cpu().numpy() for k, v in got.items()}
        n = len(next(iter(got.values())))
        out += [{k: v[j : j + 1] for k, v in got.items()} for j in range(n)]
    return out


@dataclass(frozen=True)
class Verdict:
    path: str
    status: str  # MATCH, MISMATCH, UNVERIFIABLE, BROKEN
    reason: str = ""
    matches: tuple[KeyMatch, ...] = ()


def _broken(path: str, exc: BaseException) -> Verdict:
    from npzfix_core.report import outcome_for

    return Verdict(path, BROKEN, outcome_for(path, exc).reason)


def verify(
    files: Iterable[tuple[str, str | None]],
    teacher,
    tolerance: Tolerance = Tolerance(),
    arrays: Mapping[str, Mapping[str, np.ndarray]] | None = None,
) -> list[Verdict]:
    """Verdicts for ``(npz, image or None)`` pairs against ``teacher`` (a ``LazyTeacher``: built only once a
    file is structurally sound and has a decodable image). ``arrays``: features already read, by path.

    Per-file problems are verdicts, never exceptions; a teacher that cannot be built raises (a setup error).
    """
    from npzfix_core import store
    from npzfix_core.images import load_rgb

    resolution = teacher.provenance.resolution
    verdicts: dict[str, Verdict] = {}
    todo: list[tuple[str, dict, np.ndarray]] = []
    order = []
    for npz, image in files:
        order.append(npz)
        try:
            a = dict(arrays[npz]) if arrays and npz in arrays else store.read_arrays(npz, outputs.feature_names())
        except Exception as exc:
            verdicts[npz] = _broken(npz, exc)
            continue
        problems = structure_problems(a, resolution)
        if problems:
            verdicts[npz] = Verdict(npz, BROKEN, "; ".join(problems))
        elif image is None:
            verdicts[npz] = Verdict(npz, UNVERIFIABLE, "no image found (looked beside the NPZ and in its parent)")
        else:
            try:
                todo.append((npz, a, load_rgb(image)))
            except Exception as exc:
                verdicts[npz] = Verdict(npz, UNVERIFIABLE, f"image {image} cannot be read: {exc}")
    if todo:
        built = teacher.get()
        try:
            fresh = encode_images(built, [img for _, _, img in todo])
        except Exception as exc:  # e.g. out of memory: these files are not verified, and say so
            fresh = None
            for npz, _, _ in todo:
                verdicts[npz] = Verdict(npz, UNVERIFIABLE, f"encoder failed: {type(exc).__name__}: {exc}")
        for (npz, a, _), got in zip(todo, fresh or []):
            matches = tuple(compare(k.name, a[k.name], got[k.source]) for k in outputs.features() if k.name in a)
            bad = [m for m in matches if not tolerance.accepts(m)]
            reason = (
                f"features differ from the teacher's: {'; '.join(m.describe() for m in bad)} (want {tolerance.describe()})"
                if bad
                else ""
            )
            verdicts[npz] = Verdict(npz, MISMATCH if bad else MATCH, reason, matches)
    return [verdicts[p] for p in order]


@dataclass
class Summary:
    """What a sample's verdicts add up to, as a report or check records it."""

    verified: int = 0  # recomputed and compared (matched or not)
    matched: int = 0
    not_verifiable: int = 0
    broken: int = 0
    seconds: float = 0.0
    min_cosine: dict[str, float] = field(default_factory=dict)
    max_abs_error: dict[str, float] = field(default_factory=dict)

    def add(self, verdicts: Iterable[Verdict]) -> "Summary":
        for v in verdicts:
            self.verified += v.status in (MATCH, MISMATCH)
            self.matched += v.status == MATCH
            self.not_verifiable += v.status == UNVERIFIABLE
            self.broken += v.status == BROKEN
            for m in v.matches:
                self.min_cosine[m.key] = round(min(self.min_cosine.get(m.key, 1.0), m.cosine), 6)
                self.max_abs_error[m.key] = max(self.max_abs_error.get(m.key, 0.0), float(f"{m.max_abs_error:.4g}"))
        return self

    def as_dict(self) -> dict:
        return asdict(self)


def timed_verify(
    files, teacher, tolerance: Tolerance = Tolerance(), arrays=None
) -> tuple[list[Verdict], Summary]:
    t = time.perf_counter()
    verdicts = verify(files, teacher, tolerance, arrays)
    summary = Summary().add(verdicts)
    summary.seconds = round(time.perf_counter() - t, 3)
    return verdicts, summary


UNRELATED = 0.5  # old vs new cosine below this: the file held something else (corrupt, another image, noise)


def drift_summary(samples: list[dict], candidates: int) -> dict:
    """Old vs new features of the sampled redone files: per key min/median cosine and max error, the files
    whose old features were unrelated to the new, and what had written them."""
    out: dict = {"candidates": candidates, "sampled": len(samples), "unrelated": [], "from": {}}
    for key in outputs.computed_names():
        ms = [m for s in samples for m in s["matches"] if m.key == key]
        if ms:
            cos = [m.cosine for m in ms]
            out[key] = {
                "min_cosine": round(min(cos), 6),
                "median_cosine": round(float(np.median(cos)), 6),
                "max_abs_error": float(f"{max([m.max_abs_error for m in ms if math.isfinite(m.max_abs_error)] or [0]):.4g}"),
            }
    for s in samples:
        out["from"][s["was"]] = out["from"].get(s["was"], 0) + 1
        worst = min((m.cosine for m in s["matches"]), default=-1.0)
        if worst < UNRELATED:
            out["unrelated"].append({"path": s["path"], "cosine": round(worst, 6), "was": s["was"]})
    return out

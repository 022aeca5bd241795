"""One feature file's steps, each a plain function run by the pipeline's threads: is it done (``precheck``),
load and decode it (``load``), merge new features into it (``write_features``, ``write_one``), stamp an adopted
legacy file (``adopt_one``), and what a drift sample measured (``drift_of``).

Every step returns an outcome for its file; none raises past it (a batch never dies on one file).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np

from npzfix_core import adoption, discovery, outputs, store
from npzfix_core.images import load_rgb
from npzfix_core.provenance import FEATURE_KEYS, FeatureProvenance, FeatureState, stored_teacher
from npzfix_core.report import ADOPTED, MISSING, SKIPPED_DONE, SKIPPED_LEGACY, UPDATED, Outcome, outcome_for
from npzfix_core.requests import SAMPLES, FeatureRequest
from npzfix_core.verify import KeyMatch, compare

log = logging.getLogger("npzfix")

FRESH, STALE, LEGACY = "fresh", "stale", "legacy"  # why a file needs work: not done, another teacher's, legacy


def precheck(item: discovery.WorkItem, req: FeatureRequest, prov: FeatureProvenance) -> Outcome | str:
    """The outcome of an item that needs no compute (done, legacy skipped, missing, unreadable), else why it
    needs work (FRESH, STALE or LEGACY; a legacy file's source is looked at only once it is to be redone).

    Done first, sources second: a done file needs no image, so a shard whose JPEGs were deleted after
    extraction is reported as done, not as thousands of missing sources.
    """
    why = FRESH
    try:
        if item.npz is not None and req.sets_flag and not req.force:
            state = prov.state(store.read_flags(item.npz, FEATURE_KEYS))
            if state is FeatureState.DONE:
                return Outcome(item.npz, SKIPPED_DONE)
            if state is FeatureState.LEGACY:
                if req.legacy == adoption.SKIP:
                    return Outcome(item.npz, SKIPPED_LEGACY, "flagged by the original tool (no provenance)")
                return LEGACY
            why = STALE if state is FeatureState.STALE else FRESH
    except Exception as exc:
        return outcome_for(item.npz, exc)
    return missing(item) or why


def missing(item: discovery.WorkItem) -> Outcome | None:
    if item.problem or item.npz is None or item.source is None:
        return Outcome(item.npz or item.source or item.stem, MISSING, item.problem or "missing source")
    return None


def fit(value: np.ndarray, existing: store.MemberInfo | None, store_dtype: str, key: str, new_dtype="float32") -> np.ndarray:
    """The new array in the layout the file already uses for ``key`` (shape and dtype), else ``new_dtype``."""
    dtype = (
        np.dtype(np.float32) if store_dtype == "float32" else np.dtype(np.float16) if store_dtype == "float16" else None
    )
    if existing is None:
        return value.astype(dtype or np.dtype(new_dtype), copy=False)
    if int(np.prod(existing.shape)) != value.size:
        raise store.NpzError(
            f"existing {key} has shape {existing.shape}, the teacher gives {value.shape}: "
            "wrong --resolution for this cache?"
        )
    if dtype is None:
        dtype = existing.dtype if existing.dtype.kind == "f" else np.dtype(np.float32)
    return value.reshape(existing.shape).astype(dtype, copy=False)


def write_features(npz: str, new: dict[str, np.ndarray], req: FeatureRequest, prov: FeatureProvenance) -> store.UpdateResult:
    """Merge the teacher's arrays (every row of ``outputs.FEATURES``, mirrors included), flag and provenance into
    the NPZ under its lock."""

    def prepare(existing: dict[str, store.MemberInfo]) -> dict[str, np.ndarray]:
        arrays = {
            k.name: fit(new[k.source], existing.get(k.name), req.store_dtype, k.name, k.dtype)
            for k in outputs.features()
            if k.always or k.name in existing or req.mode == SAMPLES
        }
        if req.sets_flag:
            arrays["feature_flag"] = np.array(1, dtype=np.uint8)
        return arrays

    return store.update(
        npz,
        prepare=prepare,
        remove={"feature_provenance"},  # replaced by the sealed record
        seal=lambda crcs: {"feature_provenance": prov.record(req.mode, crcs)},
        durable=req.durable,
        lock_timeout_s=req.settings.lock_timeout_s,
    )


@dataclass
class Loaded:
    item: discovery.WorkItem
    image: object = None  # preprocessed tensor (3, R, R), or a uint8 HxWx3 tensor for the device to preprocess
    error: Outcome | None = None
    t0: float = 0.0
    busy: float = 0.0
    old: dict | None = None  # drift sample: the features the file held, and what wrote them
    adopt: tuple[int, int, int] | None = None  # a legacy file fit to be stamped as it is: its identity
    job: "FileTask | None" = None


def load(item: discovery.WorkItem, resolution: int, device, stage: str, job: "FileTask") -> Loaded:
    """Check the NPZ, decode the image, then (stage) stop, preprocess here (CPU), or pin for the device.

    An adoption candidate is examined instead (structure, still legacy) and decoded only if it must be redone.
    """
    t0 = time.perf_counter()
    try:
        if job.adopt is not None:
            try:
                loaded = Loaded(item, t0=t0, adopt=adoption.adoptable(item.npz, job.prov), job=job)
                loaded.busy = time.perf_counter() - t0
                return loaded
            except adoption.NotAdoptable as exc:
                log.warning("legacy file %s is redone, not adopted: %s", item.npz, exc)
                if (gone := missing(item)) is not None:
                    return Loaded(item, error=gone, t0=t0)
        old = old_features(item.npz) if job.drift else None
        store.inspect(item.npz)  # fail before spending the encoder on an unwritable file
        img = load_rgb(item.source)
        if stage == "decode":
            loaded = Loaded(item, None, t0=t0)
        elif stage == "preprocess":
            from npzfix_core.images import preprocess

            loaded = Loaded(item, preprocess([img], resolution, device)[0], t0=t0)
        else:
            import torch

            t = torch.from_numpy(img)
            loaded = Loaded(item, t.pin_memory() if torch.cuda.is_available() else t, t0=t0)
        loaded.old = old
    except Exception as exc:
        loaded = Loaded(item, error=outcome_for(item.npz, exc), t0=t0)
    loaded.busy = time.perf_counter() - t0
    return loaded


def old_features(npz: str) -> dict:
    """What a drift-sampled file held before it is redone; an unreadable old array is drift too."""
    try:
        flags = store.read_flags(npz, FEATURE_KEYS)
        has_record, stored = stored_teacher(flags)
        was = "the original tool (no provenance)" if not has_record else stored.describe() if stored else "?"
        return {"was": was, "arrays": store.read_arrays(npz, outputs.computed_names())}
    except Exception as exc:
        return {"was": "unreadable", "arrays": {}, "error": str(exc)}


@dataclass(frozen=True)
class FileTask:
    """What is to be done with one admitted file, beside its item."""

    prov: FeatureProvenance
    why: str = FRESH
    drift: bool = False  # compare its old features with the new
    adopt: dict | None = None  # the directory's adoption evidence: stamp rather than recompute


def write_one(
    item: discovery.WorkItem, feats: dict, event, req: FeatureRequest, prov: FeatureProvenance, t0: float, old
) -> tuple[Outcome, float, dict | None]:
    """The file's outcome, the seconds this writer spent on it, and the drift measured (drift samples).
    ``feats``: the teacher's tensors for this file, by key."""
    start = time.perf_counter()
    drift = None
    try:
        if event is not None:
            event.synchronize()  # the device-to-host copy was queued asynchronously
        new = {k: v.numpy() for k, v in feats.items()}
        if old is not None:
            drift = {"path": item.npz, "was": old["was"], "matches": drift_of(old["arrays"], new)}
        write_features(item.npz, new, req, prov)
        outcome = Outcome(item.npz, UPDATED, seconds=time.perf_counter() - t0)
    except Exception as exc:
        outcome = outcome_for(item.npz, exc)
    return outcome, time.perf_counter() - start, drift


def drift_of(old: dict, new: dict) -> list:
    out = []
    for key, value in new.items():
        try:
            out.append(compare(key, old[key], value))
        except (KeyError, ValueError):  # absent or of another size: nothing like the new features
            out.append(KeyMatch(key, -1.0, math.nan, math.nan))
    return out


def adopt_one(item: discovery.WorkItem, job: FileTask, seen, req: FeatureRequest) -> tuple[Outcome, float, None]:
    start = time.perf_counter()
    try:
        adoption.adopt(item.npz, job.prov, req.mode, job.adopt, seen, req.durable, req.settings.lock_timeout_s)
        outcome = Outcome(item.npz, ADOPTED, "verified sample of its directory")
    except adoption.NotAdoptable as exc:
        outcome = Outcome(item.npz, SKIPPED_LEGACY, f"not adopted: {exc}")
    except Exception as exc:
        outcome = outcome_for(item.npz, exc)
    return outcome, time.perf_counter() - start, None

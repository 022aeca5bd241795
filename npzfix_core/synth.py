"""A seeded generator of SA-1B-like data: JPEGs, SA-1B JSON with COCO RLE masks, NPZ caches.

SA-1B cannot be downloaded here, so tests, benchmarks and the demo use this.
Masks cover the awkward cases Method B must get right (border-touching,
1-pixel, lines, rings with holes, empty, full-image, heavy overlap); NPZ files
come in every state the repair tools meet in the wild, in the format vfmkd's
writers give them (every key of a real cache, pickled ``masks`` in most files,
deflated files with box prompts in some, unpadded ids: ``sa_61713``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import cv2
import numpy as np

from npzfix_core import outputs

# What the repair tools meet in the wild. "flagged": done by the original edge tool (B_v1 flag, true Method-B
# kernel-3 edges, no provenance); "feature_flagged": done by the original feature tool (legacy flag).
STATES = ("fresh", "no_edges", "with_256", "flagged", "stale", "feature_flagged", "corrupt", "no_json")
# Not in the wild, kept for the tests that need it: a B_v1 flag over edges that are NOT Method B.
LYING_FLAG = "lying_flag"
ALL_STATES = (*STATES, LYING_FLAG)
MASK_KINDS = ("blob", "border", "pixel", "line", "ring", "empty", "full", "overlap", "rect")


@dataclass(frozen=True)
class SynthSpec:
    n: int = 20
    seed: int = 0
    sizes: tuple[tuple[int, int], ...] = ((1500, 2250),)  # (height, width), cycled
    masks: int = 100
    states: tuple[str, ...] = STATES
    feature_hw: int = 64  # P4 side; P5 is half. 64 matches a 1024 input.
    extracted: str = "extracted"
    suffix: str = "_features"
    compressed: bool = False  # every file through the box-prompt tool (deflated); else 1 in 4
    prefix: str = "sa_"


@dataclass
class SynthResult:
    root: str
    npz: list[str] = field(default_factory=list)
    states: dict[str, str] = field(default_factory=dict)  # npz path -> state


def _mask(rng: np.random.Generator, kind: str, h: int, w: int, prev: np.ndarray | None) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    if kind == "empty":
        return m
    if kind == "full":
        m[:] = 1
        return m
    if kind == "pixel":
        m[rng.integers(h), rng.integers(w)] = 1
        return m
    if kind == "line":
        p0 = (int(rng.integers(w)), int(rng.integers(h)))
        p1 = (int(rng.integers(w)), int(rng.integers(h)))
        cv2.line(m, p0, p1, 1, 1)
        return m
    if kind == "rect":
        y0, x0 = int(rng.integers(h)), int(rng.integers(w))
        m[y0 : y0 + 1 + int(rng.integers(max(h // 3, 1))), x0 : x0 + 1 + int(rng.integers(max(w // 3, 1)))] = 1
        return m
    if kind == "overlap" and prev is not None:
        k = int(rng.integers(1, 4))
        return cv2.dilate(prev, np.ones((2 * k + 1, 2 * k + 1), np.uint8))
    cx, cy = int(rng.integers(w)), int(rng.integers(h))
    if kind == "border":
        side = int(rng.integers(4))
        cx, cy = [(0, cy), (w - 1, cy), (cx, 0), (cx, h - 1)][side]
    # SA-1B mask sizes span orders of magnitude: draw the axes log-uniformly.
    ax = int(np.exp(rng.uniform(0, np.log(max(w // 4, 2)))))
    ay = int(np.exp(rng.uniform(0, np.log(max(h // 4, 2)))))
    cv2.ellipse(m, (cx, cy), (ax, ay), float(rng.uniform(0, 180)), 0, 360, 1, -1)
    if kind == "ring":
        cv2.ellipse(m, (cx, cy), (max(ax // 2, 1), max(ay // 2, 1)), 0, 0, 360, 0, -1)
        m[cy % h, cx % w] = 1  # an island inside the hole
    return m


def _blob(rng: np.random.Generator, h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    """An irregular filled polygon (SA-1B outlines follow object contours, not ellipses)."""
    n = int(rng.integers(8, 48))
    ang = np.sort(rng.uniform(0, 2 * np.pi, n))
    rad = r * np.clip(1 + 0.35 * rng.standard_normal(n), 0.3, 1.8)
    pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1).round().astype(np.int32)
    m = np.zeros((h, w), np.uint8)
    cv2.fillPoly(m, [pts], 1)
    return m


def _log_radius(rng: np.random.Generator, h: int, w: int) -> float:
    # SA-1B mask areas span ~6 orders of magnitude: draw the radius log-uniformly
    return float(np.exp(rng.uniform(np.log(1.5), np.log(max(min(h, w) / 2, 2)))))


def _sa1b_mask(rng: np.random.Generator, h: int, w: int, wholes: list[np.ndarray]) -> np.ndarray:
    """One SA-1B-like mask: an object of several components, a part of an earlier object (hierarchical
    part/whole overlap), an object with holes, or a thin structure."""
    kind = rng.choice(["object", "part", "holes", "thin"], p=[0.4, 0.3, 0.15, 0.15])
    if kind == "part" and wholes:
        whole = wholes[int(rng.integers(len(wholes)))]
        ys, xs = np.nonzero(whole)
        if len(ys):
            i = int(rng.integers(len(ys)))
            r = max(1.5, np.sqrt(len(ys)) * rng.uniform(0.15, 0.6))
            return whole & _blob(rng, h, w, xs[i], ys[i], r)
    if kind == "thin":
        m = np.zeros((h, w), np.uint8)
        pts = np.cumsum(rng.normal(0, _log_radius(rng, h, w) / 3, (int(rng.integers(3, 12)), 2)), 0)
        pts += [rng.uniform(0, w), rng.uniform(0, h)]
        cv2.polylines(m, [pts.round().astype(np.int32)], False, 1, int(rng.integers(1, 4)))
        return m
    r = _log_radius(rng, h, w)
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    m = _blob(rng, h, w, cx, cy, r)
    for _ in range(int(rng.choice([0, 0, 1, 2, 3]))):  # further components nearby
        m |= _blob(rng, h, w, cx + rng.normal(0, 2 * r), cy + rng.normal(0, 2 * r), r * rng.uniform(0.1, 0.6))
    if kind == "holes":
        for _ in range(int(rng.integers(1, 4))):
            m &= 1 - _blob(rng, h, w, cx + rng.normal(0, r / 2), cy + rng.normal(0, r / 2), r * rng.uniform(0.1, 0.4))
    wholes.append(m)
    return m


def make_annotations(rng: np.random.Generator, h: int, w: int, n_masks: int, style: str = "sa1b") -> list[dict]:
    """SA-1B style annotations: compressed RLE segmentation, bbox, area, ids.

    The first masks cover the awkward cases (border, 1-pixel, line, ring with an island, empty, full,
    overlap, rectangle); the rest are SA-1B-like (``style="sa1b"``: irregular multi-component objects,
    parts of earlier objects, holes, thin structures, log-uniform sizes) or, with ``style="ellipses"``,
    the simpler ellipses of earlier versions (kept to compare benchmark figures).
    """
    from pycocotools import mask as mask_utils

    anns, prev, wholes = [], None, []
    for i in range(n_masks):
        if i < len(MASK_KINDS) or style == "ellipses":
            kind = MASK_KINDS[i % len(MASK_KINDS)] if i < len(MASK_KINDS) else str(rng.choice(MASK_KINDS))
            m = _mask(rng, kind, h, w, prev)
        else:
            m = _sa1b_mask(rng, h, w, wholes)
        prev = m
        rle = mask_utils.encode(np.asfortranarray(m))
        anns.append(
            {
                "id": i,
                "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "area": int(mask_utils.area(rle)),
                "predicted_iou": float(rng.uniform(0.8, 1.0)),
                "stability_score": float(rng.uniform(0.8, 1.0)),
                "crop_box": [0.0, 0.0, float(w), float(h)],
                "point_coords": [[float(rng.uniform(0, w)), float(rng.uniform(0, h))]],
            }
        )
    return anns


def make_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth RGB picture (cheap to make, JPEG-friendly), uint8 HxWx3."""
    small = rng.integers(0, 256, (max(h // 64, 2), max(w // 64, 2), 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


MODEL_TYPE = "sam2.1_hiera_b+"


def _real_keys(
    rng: np.random.Generator, i: int, stem: str, h: int, w: int, spec: SynthSpec
) -> tuple[dict[str, np.ndarray], bool]:
    """The members vfmkd's writers put beside features and edges (``extract_features_v1.process_single_image``,
    then the box-prompt tool in a share of files), and whether the file is deflate-compressed.

    Which file gets what is a fixed pattern of ``i`` (not of the state): ``masks`` (a pickled object array
    ``np.array([mask], dtype=object)``, what ``has_bbox`` files hold) in 4 of 5 files, ``edge_original`` in 1 of
    11 (~9 %, older extractor runs), box prompts (and ``np.savez_compressed``) in 1 of 4, or in all when
    ``spec.compressed``."""
    a: dict[str, np.ndarray] = {}
    for side in (128, 64, 32):  # fg/bg weight maps: normalised binary maps
        fg = (cv2.resize(rng.random((8, 8)).astype(np.float32), (side, side)) > 0.6).astype(np.float32)
        a[f"fg_map_{side}x{side}"] = fg / max(float(fg.sum()), 1.0)
        bg = 1.0 - fg
        a[f"bg_map_{side}x{side}"] = (bg / max(float(bg.sum()), 1.0)).astype(np.float32)
    has_bbox = i % 5 != 4
    a["has_bbox"] = np.array(has_bbox, dtype=bool)
    a["num_bboxes"] = np.array(1 if has_bbox else 0, dtype=np.int32)
    if has_bbox:
        mask = _blob(rng, h, w, rng.uniform(0, w), rng.uniform(0, h), _log_radius(rng, h, w))
        ys, xs = np.nonzero(mask)
        box = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1] if len(xs) else [0, 0, 0, 0]
        a["bboxes"] = np.array([box], dtype=np.float32)
        a["masks"] = np.array([mask], dtype=object)  # pickled on save, as the extractor writes it
    else:
        a["bboxes"] = np.empty((0, 4), dtype=np.float32)
    a["geometry_color_flag"] = np.array(1, dtype=np.uint8)
    a["image_id"] = np.array(stem)
    a["image_shape"] = np.array((h, w, 3))  # int64, as np.array(image.shape) gives
    a["model_type"] = np.array(MODEL_TYPE)
    if i % 11 == 3:
        a["edge_original"] = (rng.random((h, w)) > 0.95).astype(np.uint8)
    prompts = spec.compressed or i % 4 == 1
    if prompts:  # update_bbox_prompts_from_json.py: rewrites the whole file with np.savez_compressed
        k = int(rng.integers(1, 4))
        xy = np.sort(rng.uniform(0, [w, h, w, h], (k, 4)).astype(np.float32).reshape(k, 2, 2), axis=1)
        a["box_prompts_xyxy"] = xy.reshape(k, 4)
        a["box_prompts_count"] = np.array(k, dtype=np.int32)
        a["box_prompts_masks_256"] = (rng.random((k, 256, 256)) > 0.7).astype(np.uint8)
        a["box_prompts_meta"] = np.array(["strategy_A"], dtype=object)
        a["box_flag"] = np.array(1, dtype=np.uint8)
    return a, prompts


def _npz_arrays(rng: np.random.Generator, state: str, fhw: int, doc: dict | None) -> dict[str, np.ndarray]:
    drawn = {k.name: rng.standard_normal(k.shape(fhw * 16), dtype=np.float32) for k in outputs.computed()}
    # a mirror never disagrees with its source in a real cache (IMAGE_EMB_S16 = P4_S16)
    a: dict[str, np.ndarray] = {k.name: drawn[k.source].copy() if k.mirror_of else drawn[k.name] for k in outputs.features()}
    if state != "no_edges":
        a["edge_64x64"] = (rng.random((64, 64)) > 0.9).astype(np.uint8)
        a["edge_32x32"] = (rng.random((32, 32)) > 0.9).astype(np.uint8)
    if state in ("with_256", "flagged", "stale", LYING_FLAG):
        a["edge_256x256"] = (rng.random((256, 256)) > 0.9).astype(np.uint8)
    if state == "flagged" and doc is not None:  # what the original tool wrote: true Method B, kernel 3
        from npzfix_core.edges import method_b, parse_sa1b

        maps = method_b(parse_sa1b(doc), 3)
        a["edge_64x64"], a["edge_32x32"], a["edge_256x256"] = maps[64], maps[32], maps[256]
    if state in ("flagged", "stale", LYING_FLAG):
        a["edge_flag"] = np.array(1, dtype=np.uint8)
        a["edge_version"] = np.array("A_v0" if state == "stale" else "B_v1")
    if state == "feature_flagged":
        a["feature_flag"] = np.array(1)  # the originals write a Python 1: int64
    return a


def generate(out: str | os.PathLike, spec: SynthSpec = SynthSpec()) -> SynthResult:
    """Write ``spec.n`` images with JSON and NPZ under ``out`` (SA-1B shard layout)."""
    root = os.fspath(out)
    ext_dir = os.path.join(root, spec.extracted)
    os.makedirs(ext_dir, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    result = SynthResult(root)
    for i in range(spec.n):
        h, w = spec.sizes[i % len(spec.sizes)]
        state = spec.states[i % len(spec.states)]
        stem = f"{spec.prefix}{spec.seed * 100_000 + i + 1}"  # SA-1B's own ids are unpadded: sa_61713
        img = make_image(rng, h, w)
        cv2.imwrite(os.path.join(root, f"{stem}.jpg"), img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
        doc = None
        if state != "no_json":
            doc = {
                "image": {"image_id": i, "file_name": f"{stem}.jpg", "height": h, "width": w},
                "annotations": make_annotations(rng, h, w, spec.masks),
            }
            with open(os.path.join(root, f"{stem}.json"), "w") as f:
                json.dump(doc, f)
        path = os.path.join(ext_dir, f"{stem}{spec.suffix}.npz")
        arrays = _npz_arrays(rng, state, spec.feature_hw, doc)
        extra, compressed = _real_keys(rng, i, stem, h, w, spec)
        (np.savez_compressed if compressed else np.savez)(path, **arrays, **extra)
        if state == "corrupt":
            size = os.path.getsize(path)
            with open(path, "r+b") as f:
                f.truncate(size // 2)
        result.npz.append(path)
        result.states[path] = state
    return result

"""Method-B edge maps, bit-identical to the original formula, without full-image work per mask.

The original decodes every mask to a full image, takes a full-image morphological
gradient, ORs it in, then INTER_AREA-resizes the union (as float32) and
thresholds at > 0. Two facts make it cheap without changing a single bit:

* A pixel is on a mask's gradient iff its k x k window (OpenCV's anchor, clipped
  at the image border) holds a 0 and a 1, iff it holds two 4-adjacent pixels
  that differ. Those transitions come straight from the COCO runs (run ends
  within a column; where adjacent columns' runs disagree), and the union over
  masks of the gradients is two dilations of the union of transitions, done
  once per image by OpenCV. Cost follows mask boundaries, not mask areas.
* A downscaling INTER_AREA output is a sum of non-negative weights times 0/1
  inputs, so it is > 0 iff one input in its support is 1. The support of each
  axis is read off OpenCV itself once per (length, size) and cached, then the
  binary resize is two OR-reductions. Upscaling axes (images under 256 px) keep
  OpenCV's own resize, which is cheap at that size.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import cv2
import numpy as np

from npzfix_core.errors import InputError
from npzfix_core.rle import ImageRuns, decode_image_runs

EDGE_SIZES = (256, 64, 32)


@dataclass(frozen=True)
class ImageAnnotations:
    height: int
    width: int
    segmentations: list


MAX_PIXELS_ENV = "NPZFIX_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 100_000_000  # SA-1B images are ~3.4 MP; a 20000x20000 claim would cost GBs per file


def max_pixels() -> int:
    return int(os.environ.get(MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS))


class AnnotationError(InputError):
    """The JSON does not describe an image with masks; the message says why."""


def parse_sa1b(doc: object) -> ImageAnnotations:
    """Image size and segmentations from an SA-1B style JSON document."""
    if not isinstance(doc, dict):
        raise AnnotationError("JSON root is not an object")
    image = doc.get("image")
    if "annotations" not in doc:  # not "no masks": the original tool failed here, and zero edges would be wrong
        raise AnnotationError("JSON has no 'annotations' list")
    anns = doc["annotations"]
    if not isinstance(image, dict) or "height" not in image or "width" not in image:
        raise AnnotationError("JSON has no image.height/image.width")
    h, w = image["height"], image["width"]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (h, w)):
        raise AnnotationError(f"image size {h!r}x{w!r} is not two positive integers"[:200])
    limit = max_pixels()
    if h * w > limit:
        raise AnnotationError(f"image size {h}x{w} is over the {limit:,}-pixel limit ({MAX_PIXELS_ENV})")
    if not isinstance(anns, list):
        raise AnnotationError("'annotations' is not a list")
    segs = []
    for i, ann in enumerate(anns):
        if not isinstance(ann, dict) or "segmentation" not in ann:
            raise AnnotationError(f"annotation {i} is not an object with a 'segmentation'")
        segs.append(ann["segmentation"])
    return ImageAnnotations(h, w, segs)


def _kernel(kernel_size: int) -> np.ndarray:
    if kernel_size < 1:
        raise ValueError("kernel size must be >= 1")
    return np.ones((kernel_size, kernel_size), dtype=np.uint8)


def _paint(flat: np.ndarray, start: np.ndarray, length: np.ndarray, height: int, hp: int) -> None:
    """Set [start, start + length) of the column-major linear index space (column height ``height``) in
    ``flat``, whose columns are ``hp`` long."""
    keep = length > 0
    start, length = start[keep], length[keep]
    if len(start) == 0:
        return
    offsets = np.cumsum(length) - length
    q = np.repeat(start - offsets, length) + np.arange(int(length.sum()))
    if hp != height:
        q += (q // height) * (hp - height)
    flat[q] = 1


def _dilate_pairs(marks: np.ndarray, kernel_size: int, pair_axis: int) -> np.ndarray:
    """Pixels whose k x k window holds a marked pair (p, p + 1 along pair_axis).

    The pair fits in the window iff its first pixel lies in the window shortened
    by one along pair_axis: a dilation with a (k-1) x k box at OpenCV's anchor.
    """
    k, a = kernel_size, kernel_size // 2
    if a <= k - 2:
        shape = (k - 1, k) if pair_axis == 0 else (k, k - 1)
        kernel = np.ones(shape, np.uint8)
    else:  # k == 2: the anchor must sit inside the kernel, so pad with a zero line
        kernel = np.ones((k, k), np.uint8)
        if pair_axis == 0:
            kernel[k - 1, :] = 0
        else:
            kernel[:, k - 1] = 0
    return cv2.dilate(marks, kernel, anchor=(a, a))


def _union_of_gradients_T(runs: ImageRuns, height: int, width: int, kernel_size: int) -> np.ndarray:
    """OR of every mask's gradient, transposed to (width, height rounded up to 8) as COCO runs are column-major.

    A pixel is on a mask's gradient iff its window (clipped to the image) holds a
    0 and a 1, iff it holds two 4-adjacent pixels that differ (the clipped
    window is a connected rectangle). So the union of gradients is the dilation
    of all masks' vertical transitions OR the dilation of all horizontal ones,
    and transitions come straight from the runs of all masks at once: cost
    follows mask boundaries, not mask areas, with no loop over masks.
    """
    hp = -(-height // 8) * 8  # rows padded to whole uint64 words for the resize
    vert = np.zeros((width, hp), np.uint8)  # (x, y) marks the pair (x, y)-(x, y+1)
    horz = np.zeros((width, hp), np.uint8)  # (x, y) marks the pair (x, y)-(x+1, y)
    _kernel(kernel_size)  # validates
    if kernel_size == 1 or not len(runs.starts):  # a 1x1 window never holds two pixels
        return vert
    s = runs.starts
    e = s + runs.lengths
    # Vertical pairs (p, p + 1) within a column: the pixel before a run, and a run's last pixel.
    v = np.concatenate([s[s % height != 0] - 1, e[e % height != 0] - 1])
    vert.reshape(-1)[v + (v // height) * (hp - height)] = 1
    # Horizontal pairs (p, p + h): where mask(p) != mask(p + h). Per mask, the step events of the mask (+1 at
    # a start, -1 at an end) minus those of the mask shifted by a column sum to mask(p) - mask(p + h); it is
    # non-zero exactly on the pairs that differ. Masks get disjoint index ranges, so one sort serves all.
    stride = height * width + 2 * height
    off = np.repeat(np.arange(len(runs.counts), dtype=np.int64) * stride + height, runs.counts)
    so, eo = s + off, e + off
    one = np.ones_like(so)
    pos = np.concatenate([so, eo, so - height, eo - height])
    order = np.argsort(pos, kind="stable")  # four sorted runs per mask: a merge
    pos, diff = pos[order], np.cumsum(np.concatenate([one, -one, -one, one])[order])
    nz = np.flatnonzero(diff[:-1] != 0)
    base = (pos[nz] - height) // stride * stride + height  # where that mask's index range begins
    a = np.maximum(pos[nz] - base, 0)
    b = np.minimum(pos[nz + 1] - base, (width - 1) * height)  # pairs (x, x + 1) exist for x < width - 1
    _paint(horz.reshape(-1), a, b - a, height, hp)
    union = _dilate_pairs(vert, kernel_size, pair_axis=1)
    np.bitwise_or(union, _dilate_pairs(horz, kernel_size, pair_axis=0), out=union)
    union[:, height:] = 0  # the dilation may spill into the padding
    return union


@functools.lru_cache(maxsize=256)
def _area_support(n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """[start, stop) of the inputs OpenCV's INTER_AREA gives positive weight, per output, for n -> size.

    Read off OpenCV by resizing an identity along one axis, so thresholds and
    rounding are OpenCV's own. Supports are contiguous and non-decreasing.
    """
    probe = cv2.resize(np.eye(n, dtype=np.float32), (size, n), interpolation=cv2.INTER_AREA)
    pos = probe > 0
    if not pos.any(axis=0).all():
        raise AssertionError("INTER_AREA support probe found an output with no input")
    start = pos.argmax(axis=0)
    stop = n - pos[::-1].argmax(axis=0)
    if int((pos.sum(axis=0) != stop - start).sum()):
        raise AssertionError("INTER_AREA support is not contiguous")
    return start.astype(np.intp), stop.astype(np.intp)


def _or_reduce(a: np.ndarray, start: np.ndarray, stop: np.ndarray, axis: int) -> np.ndarray:
    """OR over [start_j, stop_j) along axis, for possibly overlapping intervals."""
    n = a.shape[axis]
    idx = np.empty(2 * len(start), dtype=np.intp)
    idx[0::2] = start
    idx[1::2] = stop
    last_open = idx[-1] >= n
    if last_open:
        idx = idx[:-1]
    out = np.bitwise_or.reduceat(a, idx, axis=axis)
    return out.take(np.arange(0, out.shape[axis], 2), axis=axis)


def _binary_resize(union_t: np.ndarray, height: int, size: int) -> np.ndarray:
    """``cv2.resize(union.astype(float32), INTER_AREA) > 0`` for the padded, transposed union."""
    width = union_t.shape[0]
    if height >= size and width >= size:
        ys, ye = _area_support(height, size)
        xs, xe = _area_support(width, size)
        cols = _or_reduce(union_t.view(np.uint64), xs, xe, axis=0)  # 8 rows of the image per word
        cols_t = np.ascontiguousarray(cols.view(np.uint8)[:, :height].T)  # (height, size)
        words = cols_t.view(np.uint64) if size % 8 == 0 else cols_t
        return _or_reduce(words, ys, ye, axis=0).view(np.uint8)
    small = cv2.resize(union_t[:, :height].T.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    return (small > 0).astype(np.uint8)


def method_b(ann: ImageAnnotations, kernel_size: int = 3, sizes: tuple[int, ...] = EDGE_SIZES) -> dict[int, np.ndarray]:
    """Edge maps {size: uint8 0/1 (size, size)}, equal bit for bit to ``method_b_reference``."""
    runs = decode_image_runs(ann.segmentations, ann.height, ann.width)
    union_t = _union_of_gradients_T(runs, ann.height, ann.width, kernel_size)
    return {s: _binary_resize(union_t, ann.height, s) for s in sizes}


def method_b_reference(
    ann: ImageAnnotations, kernel_size: int = 3, sizes: tuple[int, ...] = EDGE_SIZES
) -> dict[int, np.ndarray]:
    """The original formula, verbatim: full decode and full-image gradient per mask.

    Kept as the yardstick for tests and benchmarks.
    """
    from pycocotools import mask as mask_utils

    kernel = _kernel(kernel_size)
    combined = np.zeros((ann.height, ann.width), dtype=np.uint8)
    for seg in ann.segmentations:
        if isinstance(seg, list):
            seg = mask_utils.merge(mask_utils.frPyObjects(seg, ann.height, ann.width))
        elif isinstance(seg.get("counts"), list):
            seg = mask_utils.frPyObjects(seg, *seg["size"])
        mask = mask_utils.decode(seg)
        edge = cv2.morphologyEx(mask, cv2.MORPH_GRADIENT, kernel)
        edge = (edge > 0).astype(np.uint8)
        combined = np.bitwise_or(combined, edge)
    edge_float = combined.astype(np.float32)
    out = {}
    for size in sizes:
        small = cv2.resize(edge_float, (size, size), interpolation=cv2.INTER_AREA)
        out[size] = (small > 0).astype(np.uint8)
    return out

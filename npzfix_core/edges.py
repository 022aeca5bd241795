"""Method-B edge maps, bit-identical to the original formula, without full-image work per mask.

The original decodes every mask to a full image, takes a full-image morphological
gradient, ORs it in, then INTER_AREA-resizes the union (as float32) and
thresholds at > 0. Two facts make it cheap without changing a single bit:

* A pixel is on a mask's gradient iff its k x k window (OpenCV's anchor, clipped
  at the image border) holds a 0 and a 1, iff it holds two 4-adjacent pixels
  that differ. Those transitions come straight from the COCO runs (run ends
  within a column; the xor of a mask and its shift by a column, from one merge
  of run boundaries), and the union over masks of the gradients is one dilation
  of the marked transitions, done once per image by OpenCV. Cost follows mask
  boundaries, not mask areas, and there is no loop over masks.
* A downscaling INTER_AREA output is a sum of non-negative weights times 0/1
  inputs, so it is > 0 iff one input in its support is 1. The support of each
  axis is read off OpenCV itself once per (length, size) and cached; the image
  is cut at every support boundary of every size, so one pass over it serves
  all three sizes. Upscaling axes (images under 256 px) keep OpenCV's own
  resize, which is cheap at that size.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from npzfix_core.errors import InputError
from npzfix_core.rle import ImageRuns, decode_image_runs
from npzfix_core.settings import DEFAULT_MAX_PIXELS, ENV

from npzfix_core.outputs import EDGE_SIZES  # noqa: E402  (one definition of the sizes written)


@dataclass(frozen=True)
class ImageAnnotations:
    height: int
    width: int
    segmentations: list


class AnnotationError(InputError):
    """The JSON does not describe an image with masks; the message says why."""


def parse_sa1b(doc: object, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageAnnotations:
    """Image size and segmentations from an SA-1B style JSON document; a size over ``max_pixels`` is refused
    before anything is allocated for it."""
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
    if h * w > max_pixels:
        raise AnnotationError(f"image size {h}x{w} is over the {max_pixels:,}-pixel limit ({ENV['max_pixels']})")
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


def _paint_intervals(flat: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """``flat[a_j:b_j] = 1`` for every j. Intervals are mostly a pixel or two long, so the first few pixels of
    all of them are written a pixel at a time and only the rare long ones are expanded."""
    n = b - a
    keep = np.flatnonzero(n > 0)
    a, n = a[keep], n[keep]
    for j in range(4):
        flat[a + j] = 1
        more = n > j + 1
        a, n = a[more], n[more]
        if not len(a):
            return
    rest = n - 4
    offsets = np.cumsum(rest) - rest
    flat[np.repeat(a + 4 - offsets, rest) + np.arange(int(rest.sum()))] = 1


_INT32_LIMIT = 1 << 31  # every mask's index range must fit int32 for the cheaper path


def _transitions(runs: ImageRuns, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """4-adjacent pairs that differ in some mask, in column-major indices of their first pixel.

    Returns vertical pairs (p, p + 1) as indices, and horizontal pairs (p, p + height) as intervals [a, b).
    """
    h = height
    stride = h * width + 2 * h
    it = np.int32 if len(runs.counts) * stride + 2 * h < _INT32_LIMIT else np.int64  # half the memory traffic
    s = runs.starts.astype(it)
    e = s + runs.lengths.astype(it)
    # Vertical pairs inside a column: the pixel before a run and a run's last pixel (none across columns).
    vert = np.concatenate([s[s % h != 0] - 1, e[e % h != 0] - 1])
    # Horizontal pairs: where the mask differs from itself one column on. A set of runs is the parity of the
    # run boundaries (start, end, start, end...) up to p, so the xor of a mask and its shift is bounded by the
    # merged boundaries of both: pairs of consecutive ones after one sort of two sorted sequences. Masks get
    # disjoint index ranges, so a single sort serves all of them, without a loop over masks.
    base = np.repeat(np.arange(len(runs.counts), dtype=it) * it(stride) + it(h), 2 * runs.counts)
    bounds = np.empty(len(base), it)
    bounds[0::2] = s
    bounds[1::2] = e
    bounds += base
    merged = np.concatenate([bounds, bounds - it(h)])
    merged.sort(kind="stable")  # two sorted runs: one merge
    a = np.maximum(merged[0::2] - base, 0)  # each mask owns 2 x its runs of consecutive pairs
    b = np.minimum(merged[1::2] - base, (width - 1) * h)  # pairs (x, x + 1) exist for x < width - 1
    return vert, a, b


def _union_of_gradients_T(runs: ImageRuns, height: int, width: int, kernel_size: int) -> np.ndarray:
    """OR of every mask's gradient, transposed to (width, height) as COCO runs are column-major.

    A pixel is on a mask's gradient iff its k x k window (OpenCV's anchor r = k // 2, clipped to the image)
    holds a 0 and a 1, iff it holds two 4-adjacent pixels that differ (the clipped window is a connected
    rectangle). A pair (q, q + e) lies in the window of p iff p - q is in a box of k x (k - 1) offsets, so the
    union of gradients is a dilation of the marked pairs, and cost follows mask boundaries, not mask areas.
    That box is the (k - 1) x (k - 1) box [-(k-2-r), r]^2 plus {0, -e}: mark each pair at q and at q - e, then
    one OpenCV dilation. A mark q - e outside the image is never needed (the one at q covers its windows) for
    k >= 3; k == 2 has no room for that and takes the offsets as they are.
    """
    h = height
    _kernel(kernel_size)  # validates
    marks = np.zeros((width, h), np.uint8)
    if kernel_size == 1 or not len(runs.starts):  # a 1x1 window never holds two pixels
        return marks
    vert, a, b = _transitions(runs, height, width)
    flat = marks.reshape(-1)
    flat[vert] = 1
    if kernel_size == 2:  # the window of p is p - {0, 1}^2: vertical pairs reach it from q + (0..1, 1)
        horz = np.zeros_like(marks)
        _paint_intervals(horz.reshape(-1), a, b)
        out = np.zeros_like(marks)
        out[:, 1:] = marks[:, :-1]
        out[1:, 1:] |= marks[:-1, :-1]
        out[1:, :] |= horz[:-1, :]
        out[1:, 1:] |= horz[:-1, :-1]
        return out
    flat[vert[vert >= h] - h] = 1  # one column left
    a -= (a % h != 0) & (b > a)  # one row up: an interval one pixel longer, unless it starts a column
    _paint_intervals(flat, a, b)
    r = kernel_size // 2
    return cv2.dilate(marks, np.ones((kernel_size - 1, kernel_size - 1), np.uint8), anchor=(r, r))


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


def _or_rows(a: np.ndarray, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """OR of rows [start_j, stop_j) of ``a`` per j (non-empty, possibly overlapping): a gather per row offset,
    each a contiguous vector OR (NumPy's reduceat walks rows several times slower)."""
    out = a[start]
    last = stop - 1
    for j in range(1, int((stop - start).max())):
        out |= a[np.minimum(start + j, last)]
    return out


@functools.lru_cache(maxsize=256)
def _segments(n: int, sizes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """Cut [0, n) at every support boundary of every size: each support is then a run of whole segments, so the
    full-size image is read once for all sizes. Returns segment starts, stops, and per size the segment range
    of each output."""
    supports = [_area_support(n, s) for s in sizes]
    cuts = np.unique(np.concatenate([np.zeros(1, np.intp)] + [x for sup in supports for x in sup]))
    cuts = cuts[cuts < n]
    per_size = [(np.searchsorted(cuts, a), np.searchsorted(cuts, b)) for a, b in supports]
    return cuts, np.r_[cuts[1:], n], per_size


def _binary_resizes(union_t: np.ndarray, sizes: tuple[int, ...]) -> dict[int, np.ndarray]:
    """``cv2.resize(union.astype(float32), (s, s), INTER_AREA) > 0`` per size s, for the transposed union.

    A downscaling INTER_AREA output is a sum of non-negative weights times 0/1 inputs, so it is > 0 iff an
    input in its support is 1: OR over supports. Upscaling axes (images under a size) use OpenCV itself.
    """
    width, height = union_t.shape
    out: dict[int, np.ndarray] = {}
    down = tuple(s for s in sizes if height >= s and width >= s)
    for s in sizes:
        if s not in down:
            small = cv2.resize(union_t.T.astype(np.float32), (s, s), interpolation=cv2.INTER_AREA)
            out[s] = (small > 0).astype(np.uint8)
    if down:
        xs, xe, per_x = _segments(width, down)
        ys, ye, per_y = _segments(height, down)
        by_x = _or_rows(union_t, xs, xe)  # (x segments, height): the only pass over the full image
        by_xy = _or_rows(cv2.transpose(by_x), ys, ye)  # (y segments, x segments)
        for s, (xa, xb), (ya, yb) in zip(down, per_x, per_y):
            rows = _or_rows(by_xy, ya, yb)  # (s, x segments)
            out[s] = cv2.transpose(_or_rows(cv2.transpose(rows), xa, xb))
    return {s: out[s] for s in sizes}


def method_b(ann: ImageAnnotations, kernel_size: int = 3, sizes: tuple[int, ...] = EDGE_SIZES) -> dict[int, np.ndarray]:
    """Edge maps {size: uint8 0/1 (size, size)}, equal bit for bit to ``method_b_reference``."""
    runs = decode_image_runs(ann.segmentations, ann.height, ann.width)
    return _binary_resizes(_union_of_gradients_T(runs, ann.height, ann.width, kernel_size), tuple(sizes))


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

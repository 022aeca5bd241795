"""COCO compressed RLE -> run lengths, for all masks of an image in one vectorised pass.

pycocotools can only turn an RLE into a full-image mask (h*w bytes per mask);
Method B needs each mask's boundary, which lives in its runs. pycocotools does
not expose the runs of a compressed RLE, so this module parses the counts string
(the LEB128-like format of ``rleFrString``) with NumPy, for every mask of an
image at once. Anything that is not a compressed RLE (polygons, uncompressed
counts) is first converted by pycocotools itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from npzfix_core.errors import InputError


class RleError(InputError):
    """A segmentation that does not describe a mask of the stated image size."""


@dataclass(frozen=True)
class MaskRuns:
    """Runs of ones of one mask, in column-major pixel order (as COCO stores them)."""

    starts: np.ndarray  # int64 linear index (col * h + row) of each run of ones
    lengths: np.ndarray  # int64 length of each run


def _size(value) -> tuple[int, int]:
    if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_int(v) and v > 0 for v in value)):
        raise RleError(f"'size' must be [height, width] of positive integers, got {value!r}"[:200])
    return int(value[0]), int(value[1])


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def outline_limit(height: int, width: int) -> int:
    """The longest outline (pixels, all polygons of one annotation) rasterised: an outline that zigzags over every
    row of the image is ~h*w long, twice that and a margin allow any real one. pycocotools allocates ~80 bytes
    per outline pixel (5x upsampled points, four int arrays), so this bounds it at ~160 bytes per image pixel
    (0.5 GB for an SA-1B image) where a polygon bomb would take tens of GB and crash the process."""
    return 2 * height * width + 4 * (height + width) + 1024


def _polygons(segmentation: list, height: int, width: int) -> list[list[float]]:
    """Polygons checked before pycocotools sees them: it crashes the process on absurd coordinates, and on
    outlines whose length times the upsampling does not fit in memory (a "polygon bomb")."""
    bound = 2 * max(height, width) + 1024
    outline, vertices = 0.0, 0
    for j, poly in enumerate(segmentation):
        if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
            raise RleError(f"polygon {j} is not a list of at least 3 x,y pairs")
        for v in poly:
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not (-bound <= v <= bound):
                raise RleError(f"polygon {j} has a coordinate {v!r} that is not a number within ±{bound}")
        xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        step = np.abs(np.diff(xy, axis=0, append=xy[:1]))
        outline += float(step.max(axis=1).sum()) + len(xy)
        vertices += len(xy)
    limit = outline_limit(height, width)
    if outline > limit:
        raise RleError(
            f"polygons with {vertices} vertices outline {outline:.3g} px, over the {limit} px a {height}x{width} image "
            f"allows (rasterising them would take ~{80 * outline / 2**30:.1f} GB)"
        )
    return segmentation


def _as_compressed(segmentation, height: int, width: int) -> tuple[bytes, tuple[int, int]]:
    if type(segmentation) is dict:  # the SA-1B case, checked without generality (runs 100 times an image)
        counts, size = segmentation.get("counts"), segmentation.get("size")
        if type(counts) is str and type(size) is list and len(size) == 2 and counts.isascii():
            h, w = size
            if type(h) is int and type(w) is int and h > 0 and w > 0:
                return counts.encode("ascii"), (h, w)
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), (str, bytes)):
        counts = segmentation["counts"]
        size = _size(segmentation.get("size"))
        if isinstance(counts, str):
            if not counts.isascii():
                raise RleError("RLE counts hold non-ASCII characters")
            counts = counts.encode("ascii")
        return counts, size
    from pycocotools import mask as mask_utils

    try:
        if isinstance(segmentation, dict):  # uncompressed RLE
            size = _size(segmentation.get("size"))
            counts = segmentation.get("counts")
            if not (isinstance(counts, list) and all(_is_int(c) and c >= 0 for c in counts)):
                raise RleError("uncompressed RLE counts must be a list of non-negative integers")
            if sum(counts) != size[0] * size[1]:
                raise RleError(f"RLE covers {sum(counts)} pixels, its size says {size[0] * size[1]}")
            rle = mask_utils.frPyObjects(segmentation, *size)
        elif isinstance(segmentation, list):  # polygons
            rles = mask_utils.frPyObjects(_polygons(segmentation, height, width), height, width)
            rle = mask_utils.merge(rles) if rles else mask_utils.frPyObjects([[0, 0, 0, 0, 0, 0]], height, width)[0]
        else:
            raise RleError(f"unsupported segmentation type {type(segmentation).__name__}")
    except RleError:
        raise
    except Exception as exc:  # pycocotools raises bare Exception, TypeError, OverflowError...
        raise RleError(f"pycocotools refused the segmentation: {type(exc).__name__}: {exc}") from exc
    return rle["counts"], tuple(rle["size"])


@dataclass(frozen=True)
class ImageRuns:
    """Runs of ones of every mask of an image, flat: mask ``i`` owns ``counts[i]`` consecutive runs."""

    starts: np.ndarray  # int64 linear index (col * h + row)
    lengths: np.ndarray  # int64 > 0
    counts: np.ndarray  # runs per mask

    def per_mask(self) -> list[MaskRuns]:
        bounds = np.r_[0, np.cumsum(self.counts)]
        return [MaskRuns(self.starts[a:b], self.lengths[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def decode_runs(segmentations: list, height: int, width: int) -> list[MaskRuns]:
    """Runs of ones for each segmentation; raises RleError on malformed or mis-sized input."""
    return decode_image_runs(segmentations, height, width).per_mask()


def decode_image_runs(segmentations: list, height: int, width: int) -> ImageRuns:
    """Runs of ones of all segmentations at once, without a Python loop over masks after parsing."""
    strings = _counts_strings(segmentations, height, width)
    empty = np.zeros(0, np.int64)
    if not strings:
        return ImageRuns(empty, empty, empty)
    string_end = np.cumsum(np.fromiter(map(len, strings), np.int64, len(strings))) - 1
    small = height * width < 1 << 29  # numbers of an image of under 2**29 pixels fit 6 characters and int32
    x, ends = _numbers(np.frombuffer(b"".join(strings), np.uint8) - np.uint8(48), string_end, small)
    return _runs(x, ends, string_end, len(strings), height, width)


def _counts_strings(segmentations: list, height: int, width: int) -> list[bytes]:
    """Each segmentation's compressed counts string, its size checked against the image's."""
    strings: list[bytes] = []
    for i, seg in enumerate(segmentations):
        try:
            counts, size = _as_compressed(seg, height, width)
        except RleError as exc:
            raise RleError(f"annotation {i}: {exc}") from exc
        if size != (height, width):
            raise RleError(f"annotation {i}: RLE size {list(size)} disagrees with image size {[height, width]}")
        if not counts:
            raise RleError(f"annotation {i}: empty RLE counts")
        strings.append(counts)
    return strings


def _annotation_at(string_end: np.ndarray, char_pos: int) -> int:
    return int(np.searchsorted(string_end, char_pos))


def _numbers(c: np.ndarray, string_end: np.ndarray, small: bool) -> tuple[np.ndarray, np.ndarray]:
    """The signed numbers of every counts string (``c``: characters - '0', one array for all strings), and the
    index of each one's last character."""
    it = np.int32 if small else np.int64
    if (c > 63).any():  # below '0' wraps past 63
        at = _annotation_at(string_end, int(np.argmax(c > 63)))
        raise RleError(f"annotation {at}: RLE counts hold characters outside the COCO alphabet")
    last = c < 32  # a number's last character has no continuation bit (0x20)
    if not last[string_end].all():
        raise RleError(f"annotation {int(np.argmin(last[string_end]))}: RLE counts string ends inside a number")
    ends = np.flatnonzero(last)
    length = np.diff(ends, prepend=-1)
    longest = int(length.max())
    if longest > (6 if small else 12):
        raise RleError(f"annotation {_annotation_at(string_end, int(ends[np.argmax(length)]))}: RLE count too large")
    # 5 bits per character, least significant first: fold from each number's last character back.
    c_end = c[ends]
    x = (c_end & 0x1F).astype(it)
    for j in range(1, longest):
        sel = np.flatnonzero(length > j)
        x[sel] = (x[sel] << 5) | (c[ends[sel] - j] & 0x1F)
    x -= np.where((c_end & 0x10) != 0, np.left_shift(it(1), (5 * length).astype(it)), it(0))  # sign bit
    return x, ends


def _runs(x: np.ndarray, ends: np.ndarray, string_end: np.ndarray, n_strings: int, height: int, width: int) -> ImageRuns:
    """Delta-decoded run lengths -> runs of ones (start, length, owning mask), every string's total checked."""
    # Each number's string and index m within it: delta coding restarts per mask.
    num_end = np.searchsorted(ends, string_end)  # index of each string's last number
    per_string = np.diff(num_end, prepend=-1)
    first = num_end - per_string + 1
    n = len(x)
    first_of = np.repeat(first, per_string)
    even = ((np.arange(n) - first_of) & 1) == 0
    # COCO: counts[m] = x[m] + counts[m - 2] for m > 2, a running sum along each parity class of a string.
    # One strided running sum over all strings (S[i + 2] = x[i] + x[i - 2] + ...), less what precedes the
    # class's first element in its string: element first - 1 (odd m) or first (even m, whose chain starts at 2).
    xp = x if n % 2 == 0 else np.r_[x, x.dtype.type(0)]
    S = np.zeros(len(xp) + 2, np.int64)
    S[2:] = xp.reshape(-1, 2).cumsum(axis=0, dtype=np.int64).reshape(-1)
    counts = S[2 : n + 2] - S[first_of + even + 1]
    counts[first] = x[first]
    if (counts < 0).any():
        at = _annotation_at(string_end, int(ends[np.argmax(counts < 0)]))
        raise RleError(f"annotation {at}: RLE counts decode to negative run lengths")
    # Positions: running sum of run lengths within each string.
    cs = np.cumsum(counts)
    before = np.r_[0, cs[num_end[:-1]]]
    total = cs[num_end] - before
    bad = np.flatnonzero(total != height * width)
    if len(bad):
        raise RleError(f"annotation {int(bad[0])}: RLE covers {int(total[bad[0]])} pixels, image has {height * width}")
    keep = np.flatnonzero(~even & (counts > 0))  # runs of ones (odd m), empty ones dropped
    length = counts[keep]
    owner = np.searchsorted(num_end, keep)
    return ImageRuns(cs[keep] - length - before[owner], length, np.bincount(owner, minlength=n_strings))

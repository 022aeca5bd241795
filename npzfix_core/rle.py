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


def _as_compressed(segmentation, height: int, width: int) -> tuple[bytes, tuple[int, int]]:
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), (str, bytes)):
        counts = segmentation["counts"]
        size = segmentation.get("size")
        if not (isinstance(size, (list, tuple)) and len(size) == 2):
            raise RleError("RLE without a valid 'size'")
        return (counts.encode("ascii") if isinstance(counts, str) else counts), (int(size[0]), int(size[1]))
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, dict):  # uncompressed RLE
        size = segmentation.get("size")
        if not (isinstance(size, (list, tuple)) and len(size) == 2):
            raise RleError("RLE without a valid 'size'")
        rle = mask_utils.frPyObjects(segmentation, int(size[0]), int(size[1]))
    elif isinstance(segmentation, list):  # polygons
        rles = mask_utils.frPyObjects(segmentation, height, width)
        rle = mask_utils.merge(rles) if rles else mask_utils.frPyObjects([[0, 0, 0, 0, 0, 0]], height, width)[0]
    else:
        raise RleError(f"unsupported segmentation type {type(segmentation).__name__}")
    return rle["counts"], tuple(rle["size"])


def decode_runs(segmentations: list, height: int, width: int) -> list[MaskRuns]:
    """Runs of ones for each segmentation; raises RleError on malformed or mis-sized input."""
    strings: list[bytes] = []
    for i, seg in enumerate(segmentations):
        counts, size = _as_compressed(seg, height, width)
        if size != (height, width):
            raise RleError(f"annotation {i}: RLE size {list(size)} disagrees with image size {[height, width]}")
        if not counts:
            raise RleError(f"annotation {i}: empty RLE counts")
        strings.append(counts)
    if not strings:
        return []

    lens = np.fromiter((len(s) for s in strings), np.int64, len(strings))
    c = np.frombuffer(b"".join(strings), np.uint8).astype(np.int64) - 48
    if c.min() < 0 or c.max() > 63:
        raise RleError("RLE counts contain characters outside the COCO alphabet")
    more = (c & 0x20) != 0
    string_end = np.cumsum(lens) - 1
    if more[string_end].any():
        raise RleError("RLE counts string ends inside a number")
    ends = np.flatnonzero(~more)  # last char of each number
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    group = np.repeat(np.arange(len(ends)), ends - starts + 1)
    k = np.arange(len(c)) - starts[group]
    if k.max() > 11:
        raise RleError("RLE count too large")
    x = np.add.reduceat((c & 0x1F) << (5 * k), starts)
    neg = (c[ends] & 0x10) != 0
    x[neg] -= np.left_shift(1, 5 * (k[ends][neg] + 1))

    # Number index within its own string: delta coding restarts per mask.
    string_of = np.searchsorted(np.cumsum(lens), ends, side="right")
    first = np.searchsorted(string_of, np.arange(len(strings)), side="left")
    m = np.arange(len(ends)) - first[string_of]
    counts = x.copy()
    for parity_mask in ((m % 2 == 1), (m % 2 == 0) & (m >= 2)):
        v = np.where(parity_mask, x, 0)
        cs = np.cumsum(v)
        base = np.where(first > 0, cs[np.maximum(first - 1, 0)], 0)
        counts[parity_mask] = (cs - base[string_of])[parity_mask]
    if (counts < 0).any():
        raise RleError("RLE counts decode to negative run lengths")

    # Positions: cumulative sum of run lengths within each string.
    cs = np.cumsum(counts)
    base = np.where(first > 0, cs[np.maximum(first - 1, 0)], 0)
    run_end = cs - base[string_of]  # exclusive end of each run
    last = np.r_[first[1:], len(counts)] - 1
    total = run_end[last]
    bad = np.flatnonzero(total != height * width)
    if len(bad):
        raise RleError(f"annotation {int(bad[0])}: RLE covers {int(total[bad[0]])} pixels, image has {height * width}")
    ones = (m % 2) == 1
    out: list[MaskRuns] = []
    bounds = np.r_[first, len(counts)]
    for i in range(len(strings)):
        sl = slice(bounds[i], bounds[i + 1])
        sel = ones[sl] & (counts[sl] > 0)
        length = counts[sl][sel]
        out.append(MaskRuns(run_end[sl][sel] - length, length))
    return out

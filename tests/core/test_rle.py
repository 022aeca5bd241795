import numpy as np
import pytest
from pycocotools import mask as mask_utils

from npzfix_core import synth
from npzfix_core.rle import RleError, decode_runs


def _mask_from_runs(runs, h, w):
    flat = np.zeros(h * w, np.uint8)
    for s, n in zip(runs.starts, runs.lengths):
        flat[s : s + n] = 1
    return flat.reshape(w, h).T  # column-major, as COCO


@pytest.mark.parametrize("h,w", [(1, 1), (1, 9), (9, 1), (50, 70), (301, 120), (1500, 2250)])
def test_runs_match_pycocotools_decode(h, w):
    rng = np.random.default_rng(h * 7 + w)
    anns = synth.make_annotations(rng, h, w, 30)
    segs = [a["segmentation"] for a in anns]
    for seg, runs in zip(segs, decode_runs(segs, h, w)):
        np.testing.assert_array_equal(_mask_from_runs(runs, h, w), mask_utils.decode(seg))


def test_long_counts_and_negative_deltas():
    # stripes give counts whose deltas are negative and numbers that span several characters
    m = np.zeros((600, 7), np.uint8)
    m[::3, :] = 1
    m[:, 3] = 1
    m[100:599, 5] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    (runs,) = decode_runs([rle], 600, 7)
    np.testing.assert_array_equal(_mask_from_runs(runs, 600, 7), m)


def test_uncompressed_and_polygon_segmentations_go_through_pycocotools():
    poly = [[2.0, 2.0, 30.0, 4.0, 20.0, 25.0]]
    unc = {"size": [40, 50], "counts": [100, 20, 1880]}
    runs = decode_runs([poly, unc], 40, 50)
    want_poly = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(poly, 40, 50)))
    np.testing.assert_array_equal(_mask_from_runs(runs[0], 40, 50), want_poly)
    want_unc = mask_utils.decode(mask_utils.frPyObjects(unc, 40, 50))
    np.testing.assert_array_equal(_mask_from_runs(runs[1], 40, 50), want_unc)


@pytest.mark.parametrize(
    "seg,msg",
    [
        ({"size": [10, 10], "counts": "0"}, "covers"),  # too few pixels
        ({"size": [10, 12], "counts": "0<"}, "disagrees"),
        ({"size": [10, 10], "counts": "\x7f\x7f"}, "alphabet"),
        ({"size": [10, 10], "counts": "h"}, "ends inside"),  # continuation bit on the last char
        ({"counts": "0"}, "size"),
        ("nonsense", "unsupported"),
    ],
)
def test_malformed_rle_is_a_clear_error(seg, msg):
    with pytest.raises(RleError, match=msg):
        decode_runs([seg], 10, 10)

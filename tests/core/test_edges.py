"""Method B: the fast path equals the original formula bit for bit."""

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from npzfix_core import synth
from npzfix_core.edges import ImageAnnotations, _area_support, method_b, method_b_reference

SIZES = [
    (1, 1),
    (1, 7),
    (7, 1),
    (2, 2),
    (5, 300),
    (300, 5),
    (31, 33),
    (100, 100),
    (255, 257),
    (256, 256),
    (257, 1000),
    (512, 512),
    (333, 3000),
    (768, 1024),
    (1500, 2250),
]


def _ann(h, w, n, seed):
    anns = synth.make_annotations(np.random.default_rng(seed), h, w, n)
    return ImageAnnotations(h, w, [a["segmentation"] for a in anns])


def _independent_reference(ann, k):
    """The original script's loop, written out again here so the test does not trust the library."""
    combined = np.zeros((ann.height, ann.width), np.uint8)
    for seg in ann.segmentations:
        m = mask_utils.decode(seg)
        e = cv2.morphologyEx(m, cv2.MORPH_GRADIENT, np.ones((k, k), np.uint8))
        combined = np.bitwise_or(combined, (e > 0).astype(np.uint8))
    f = combined.astype(np.float32)
    return {s: (cv2.resize(f, (s, s), interpolation=cv2.INTER_AREA) > 0).astype(np.uint8) for s in (256, 64, 32)}


@pytest.mark.parametrize("h,w", SIZES)
@pytest.mark.parametrize("k", [3, 5, 7])
def test_bit_identical_to_original(h, w, k):
    """On SA-1B-like masks (multi-component objects, parts, holes, thin structures), every size, k 3/5/7."""
    ann = _ann(h, w, 40 if h * w > 10000 else 12, seed=h * 31 + w)
    got, want = method_b(ann, k), _independent_reference(ann, k)
    for s in (256, 64, 32):
        assert got[s].dtype == np.uint8 and got[s].shape == (s, s)
        np.testing.assert_array_equal(got[s], want[s], err_msg=f"{h}x{w} k={k} size={s}")


@pytest.mark.parametrize("k", [1, 2, 4, 6, 7, 9])
def test_every_kernel_size(k):
    for h, w in [(90, 140), (300, 257), (40, 500), (17, 17)]:
        ann = _ann(h, w, 25, seed=k * 100 + h)
        got, want = method_b(ann, k), method_b_reference(ann, k)
        for s in want:
            np.testing.assert_array_equal(got[s], want[s], err_msg=f"{h}x{w} k={k} size={s}")


def test_random_sizes_fuzz():
    rng = np.random.default_rng(123)
    for _ in range(25):
        h, w = (int(v) for v in rng.integers(1, 1200, 2))
        k = int(rng.integers(1, 8))
        ann = _ann(h, w, 15, seed=int(rng.integers(1 << 30)))
        got, want = method_b(ann, k), method_b_reference(ann, k)
        for s in want:
            np.testing.assert_array_equal(got[s], want[s], err_msg=f"{h}x{w} k={k} size={s}")


def test_no_annotations_gives_empty_maps():
    got = method_b(ImageAnnotations(200, 300, []), 3)
    assert all(not m.any() for m in got.values())


def test_full_image_mask_has_no_edges_but_a_border_square_does():
    full = np.ones((300, 400), np.uint8)
    sq = np.zeros((300, 400), np.uint8)
    sq[0:50, 0:60] = 1  # touches the top-left border: only its two inner sides are edges
    segs = [mask_utils.encode(np.asfortranarray(m)) for m in (full, sq)]
    got = method_b(ImageAnnotations(300, 400, segs[:1]), 3)
    assert not got[64].any()
    got = method_b(ImageAnnotations(300, 400, segs[1:]), 3)
    want = method_b_reference(ImageAnnotations(300, 400, segs[1:]), 3)
    np.testing.assert_array_equal(got[256], want[256])
    assert got[256][0, 0] == 0 and got[256].any()


def test_area_support_is_what_opencv_weights():
    for n, s in [(2250, 256), (1500, 64), (300, 32), (257, 256), (512, 256), (256, 256)]:
        start, stop = _area_support(n, s)
        assert start[0] == 0 and stop[-1] == n and (np.diff(start) >= 0).all()


def _gradient_union(masks, k):
    combined = np.zeros(masks[0].shape, np.uint8)
    for m in masks:
        combined |= cv2.morphologyEx(m, cv2.MORPH_GRADIENT, np.ones((k, k), np.uint8)) > 0
    return combined


def test_full_resolution_union_equals_the_original_pixel_for_pixel():
    """Before pooling, where a wrong pixel cannot hide behind a right neighbour: noise masks (a transition at
    every other pixel), masks touching every border, full and empty masks, k = 1..9, sizes down to 1x1."""
    from npzfix_core.edges import _union_of_gradients_T
    from npzfix_core.rle import decode_image_runs

    rng = np.random.default_rng(5)
    for trial in range(60):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        masks = [
            (rng.random((h, w)) < rng.uniform(0.05, 0.95)).astype(np.uint8) for _ in range(int(rng.integers(1, 6)))
        ]
        masks.append(np.ones((h, w), np.uint8))
        masks.append(np.zeros((h, w), np.uint8))
        border = np.zeros((h, w), np.uint8)
        border[:, : max(1, w // 3)] = 1
        border[: max(1, h // 2), :] = 1
        masks.append(border)
        segs = [mask_utils.encode(np.asfortranarray(m)) for m in masks]
        runs = decode_image_runs(segs, h, w)
        for k in range(1, 10):
            got = _union_of_gradients_T(runs, h, w, k).T
            np.testing.assert_array_equal(got, _gradient_union(masks, k), err_msg=f"{h}x{w} k={k} trial {trial}")
    for h, w in [(300, 451), (451, 300)]:
        ann = _ann(h, w, 40, seed=h)
        masks = [mask_utils.decode(s) for s in ann.segmentations]
        runs = decode_image_runs(ann.segmentations, h, w)
        for k in (2, 3, 5, 7):
            got = _union_of_gradients_T(runs, h, w, k).T
            np.testing.assert_array_equal(got, _gradient_union(masks, k), err_msg=f"SA-1B-like {h}x{w} k={k}")


def test_int64_index_path_equals_the_int32_one(monkeypatch):
    """Images x masks past 2**31 indices take int64; forced here on a small case, both must agree."""
    from npzfix_core import edges

    ann = _ann(301, 457, 30, seed=4)
    want = {k: method_b(ann, k) for k in (2, 3, 5)}
    monkeypatch.setattr(edges, "_INT32_LIMIT", 0)
    for k, maps in want.items():
        got = method_b(ann, k)
        for s in maps:
            np.testing.assert_array_equal(got[s], maps[s], err_msg=f"k={k} size={s}")

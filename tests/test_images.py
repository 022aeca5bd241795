"""JPEG decoding: the OpenCV fast path gives exactly the pixels of the documented rule (Pillow's RGB)."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from npzfix_core import images
from npzfix_core.images import ImageError, load_rgb


def _content(h, w, seed):
    """Noise over smooth gradients and hard edges: every DCT frequency and chroma detail gets exercised."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 255) // max(w - 1, 1), (y * 255) // max(h - 1, 1), ((x + y) % 64) * 4], axis=2)
    base[(x // 7 + y // 5) % 3 == 0] = (250, 10, 120)
    return np.clip(base + rng.integers(-40, 41, (h, w, 3)), 0, 255).astype(np.uint8)


def _pil_jpeg(rgb, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", **kw)
    return buf.getvalue()


def _cv_jpeg(rgb, *params) -> bytes:
    ok, enc = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), list(params))
    assert ok
    return enc.tobytes()


def _variants():
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90": must be ignored (stored pixel order)
    for h, w in [(1, 1), (9, 17), (65, 33), (240, 321)]:
        rgb = _content(h, w, h * 1000 + w)
        for sub in (0, 1, 2):
            for q in (50, 95, 100):
                yield f"pil {h}x{w} sub{sub} q{q}", _pil_jpeg(rgb, subsampling=sub, quality=q)
            if h * w > 1:  # Pillow cannot write a 1x1 progressive or optimised JPEG to memory
                yield f"pil {h}x{w} sub{sub} progressive", _pil_jpeg(rgb, subsampling=sub, progressive=True)
                yield f"pil {h}x{w} sub{sub} optimize", _pil_jpeg(rgb, subsampling=sub, optimize=True)
        yield f"pil {h}x{w} exif", _pil_jpeg(rgb, exif=exif.tobytes())
        yield f"pil {h}x{w} adobe rgb", _pil_jpeg(rgb, keep_rgb=True)
        yield f"pil {h}x{w} restart", _pil_jpeg(rgb, restart_marker_blocks=2)
        for factor in ("411", "420", "422", "440", "444"):
            flag = getattr(cv2, f"IMWRITE_JPEG_SAMPLING_FACTOR_{factor}")
            yield f"cv {h}x{w} {factor}", _cv_jpeg(rgb, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, flag)
        yield (
            f"cv {h}x{w} progressive rst",
            _cv_jpeg(rgb, cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_RST_INTERVAL, 3),
        )
    big = _content(1500, 2250, 7)
    yield "pil 1500x2250 sa1b-like", _pil_jpeg(big, quality=85)


VARIANTS = list(_variants())


@pytest.mark.parametrize("name,data", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_opencv_fast_path_equals_pillow(tmp_path, name, data):
    p = tmp_path / "x.jpg"
    p.write_bytes(data)
    with Image.open(p) as im:
        want = np.array(im.convert("RGB"))
        assert im.mode == "RGB" and im.format == "JPEG"
        size = im.size
    fast = images._opencv_rgb(data, size)
    assert fast is not None, f"{name}: OpenCV refused"
    np.testing.assert_array_equal(fast, want, err_msg=name)
    np.testing.assert_array_equal(load_rgb(str(p)), want, err_msg=name)


def test_only_complete_plain_colour_jpegs_take_the_fast_path(tmp_path, monkeypatch):
    calls = []
    real = images._opencv_rgb
    monkeypatch.setattr(images, "_opencv_rgb", lambda *a: calls.append(1) or real(*a))
    rgb = _content(64, 80, 3)
    data = _pil_jpeg(rgb)
    whole = tmp_path / "whole.jpg"
    whole.write_bytes(data)
    load_rgb(str(whole))
    assert calls == [1]
    # truncated: Pillow fails it; OpenCV alone would have returned grey rows
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="cannot decode"):
        load_rgb(str(cut))
    # truncated, then an EOI marker stuck on: both decoders see the same bytes and must agree
    glued = tmp_path / "glued.jpg"
    glued.write_bytes(data[: len(data) // 2] + b"\xff\xd9")
    want = np.array(Image.open(glued).convert("RGB"))
    np.testing.assert_array_equal(load_rgb(str(glued)), want)
    # grayscale and CMYK JPEGs: Pillow's conversion is the rule
    for mode in ("L", "CMYK"):
        q = tmp_path / f"{mode}.jpg"
        Image.fromarray(rgb).convert(mode).save(q)
        np.testing.assert_array_equal(load_rgb(str(q)), np.array(Image.open(q).convert("RGB")))
    assert len(calls) == 2
    # and the switch turns it off
    np.testing.assert_array_equal(load_rgb(str(whole), "pil"), np.array(Image.open(whole).convert("RGB")))
    assert len(calls) == 2

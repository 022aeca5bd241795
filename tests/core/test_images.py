"""Image decoding: exactly the pixels of the original tools' ``cv2.imread(path)`` + BGR->RGB, over JPEG encodings,
EXIF orientations 1-8, grayscale, palette, alpha, 16-bit and CMYK; truncated files fail with a reason."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image

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
    exif[0x0112] = 6  # "rotate 90": applied, as OpenCV does
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


def _original(path) -> np.ndarray:
    """What the originals (and the student's cv2.imdecode) give: the independent reference."""
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.mark.parametrize("name,data", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_jpegs_decode_as_the_originals(tmp_path, name, data):
    p = tmp_path / "x.jpg"
    p.write_bytes(data)
    got = load_rgb(str(p))
    np.testing.assert_array_equal(got, _original(p), err_msg=name)
    assert got.dtype == np.uint8 and got.flags.c_contiguous


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_opencv_does(tmp_path, orientation):
    rgb = _content(40, 64, orientation)
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = tmp_path / f"o{orientation}.jpg"
    p.write_bytes(_pil_jpeg(rgb, exif=exif.tobytes(), quality=95))
    got = load_rgb(str(p))
    np.testing.assert_array_equal(got, _original(p))
    assert got.shape[:2] == ((64, 40) if orientation >= 5 else (40, 64))  # 5-8 transpose the stored image
    stored = np.array(Image.open(p).convert("RGB"))
    assert (orientation == 1) == np.array_equal(got, stored)


def _png(tmp_path, name, image, **kw):
    p = tmp_path / f"{name}.png"
    image.save(p, **kw)
    return p


def test_other_modes_convert_as_opencv_does(tmp_path):
    rgb = _content(33, 47, 5)
    cases = {
        "gray.jpg": lambda p: Image.fromarray(rgb).convert("L").save(p),
        "cmyk.jpg": lambda p: Image.fromarray(rgb).convert("CMYK").save(p),
        "gray.png": lambda p: Image.fromarray(rgb).convert("L").save(p),
        "palette.png": lambda p: Image.fromarray(rgb).convert("P").save(p),
        "rgba.png": lambda p: Image.fromarray(np.dstack([rgb, rgb[:, :, :1]])).save(p),
        "gray16.png": lambda p: cv2.imwrite(str(p), (rgb[:, :, 0].astype(np.uint16) * 257 + 3)),
        "color16.png": lambda p: cv2.imwrite(str(p), rgb.astype(np.uint16) * 250),
    }
    for name, make in cases.items():
        p = tmp_path / name
        make(p)
        got = load_rgb(str(p))
        np.testing.assert_array_equal(got, _original(p), err_msg=name)
        assert got.shape == (33, 47, 3) and got.dtype == np.uint8, name


def test_truncated_and_undecodable_images_fail_with_a_reason(tmp_path):
    rgb = _content(64, 80, 3)
    for name, data in {
        "cut.jpg": _pil_jpeg(rgb)[: len(_pil_jpeg(rgb)) // 2],
        "cut_progressive.jpg": _pil_jpeg(rgb, progressive=True)[:-100],
        "cut.png": cv2.imencode(".png", rgb)[1].tobytes()[:-30],
    }.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(ImageError, match="truncated"):
            load_rgb(str(p))
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match="cannot decode"):
        load_rgb(str(junk))
    # an EXIF thumbnail carries its own EOI: a main image cut after it is still truncated
    thumb = _pil_jpeg(_content(8, 8, 1))
    exif = Image.Exif()
    exif[0x0112] = 1
    with_thumb = _pil_jpeg(rgb, exif=exif.tobytes())
    data = with_thumb[:2] + b"\xff\xe2" + (len(thumb) + 2).to_bytes(2, "big") + thumb + with_thumb[2:]
    ok = tmp_path / "thumb.jpg"
    ok.write_bytes(data)
    np.testing.assert_array_equal(load_rgb(str(ok)), _original(ok))
    cut = tmp_path / "thumb_cut.jpg"
    cut.write_bytes(data[:-200])
    with pytest.raises(ImageError, match="truncated"):
        load_rgb(str(cut))

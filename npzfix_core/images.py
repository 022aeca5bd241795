"""Image decoding and SAM2 preprocessing.

Decoding rule (one for every mode):
* pixels are taken as stored: EXIF orientation is NOT applied, so features stay
  aligned with SA-1B masks, which are in stored pixel order (and with what
  ``PIL.Image.open(p).convert("RGB")`` gives, as SAM2's examples do);
* grayscale, palette, CMYK and RGBA become RGB (alpha is dropped, not composited);
* 16-bit images are scaled to 8 bits (round(v / 257));
* truncated or undecodable files are failures with the decoder's reason.

Preprocessing reproduces ``SAM2Transforms`` (ToTensor -> Resize(R, R) bilinear
with antialias -> ImageNet Normalize) with plain torch ops, which also run on a
GPU, in batches, and need no torchvision.
"""

from __future__ import annotations

import io

import numpy as np

from npzfix_core.errors import InputError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class ImageError(InputError):
    pass


def load_rgb(path: str, decoder: str = "opencv") -> np.ndarray:
    """HxWx3 uint8 RGB, by the rule above (``decoder="pil"`` turns the OpenCV fast path off).

    Plain colour JPEGs (the SA-1B case) are decoded by OpenCV, ~30 % faster than Pillow: both run
    libjpeg-turbo with the same settings (islow IDCT, fancy upsampling), and ``tests/test_images.py`` holds
    them to identical pixels over subsamplings, progressive, restart markers, odd sizes, EXIF and Adobe
    files. Only a complete file goes that way (it ends with the EOI marker; OpenCV would fill a truncated one
    with grey where Pillow fails it); anything else, and any OpenCV refusal, is Pillow's.
    """
    from PIL import Image

    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ImageError(f"cannot read image {path}: {exc}") from exc
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format == "JPEG" and im.mode == "RGB" and decoder != "pil" and data.endswith(b"\xff\xd9"):
                a = _opencv_rgb(data, im.size)
                if a is not None:
                    return a
            im.load()  # raises on truncated data instead of returning grey rows
            mode = im.mode
            if mode.startswith("I;16") or mode in ("I", "F"):
                a = np.asarray(im)
                if a.dtype.kind == "f" or a.max(initial=0) > 65535 or a.min(initial=0) < 0:
                    raise ImageError(f"unsupported {mode} image with values outside 0..65535")
                a = np.rint(a.astype(np.float64) / 257.0).astype(np.uint8)
                return np.repeat(a[:, :, None], 3, axis=2)
            if mode != "RGB":
                im = im.convert("RGB")
            a = np.array(im)  # a writable copy: torch refuses read-only buffers
    except ImageError:
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise ImageError(f"cannot decode image {path}: {exc}") from exc
    if a.ndim != 3 or a.shape[2] != 3 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ImageError(f"unexpected decoded shape {a.shape} for {path}")
    return np.ascontiguousarray(a)


def _opencv_rgb(data: bytes, size: tuple[int, int]) -> np.ndarray | None:
    """Stored pixel order (EXIF orientation ignored, as Pillow does), RGB; None where OpenCV disagrees."""
    import cv2

    a = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
    if a is None or a.dtype != np.uint8 or a.shape != (size[1], size[0], 3):
        return None
    return a


def preprocess(images, resolution: int, device):
    """uint8 HxWx3 arrays/tensors -> normalised float32 batch (B, 3, R, R) on ``device``."""
    import torch
    import torch.nn.functional as F

    mean = torch.tensor(MEAN, device=device).view(3, 1, 1)
    std = torch.tensor(STD, device=device).view(3, 1, 1)
    out = []
    for img in images:
        t = torch.as_tensor(img).to(device, non_blocking=True)
        x = t.permute(2, 0, 1).float().div(255)
        x = F.interpolate(x[None], size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)[
            0
        ]
        out.append(x.sub_(mean).div_(std))
    return torch.stack(out)

"""Image decoding and SAM2 preprocessing.

Decoding rule (one for every mode): what the original tools and the student's loader do, ``cv2.imread(path)``
(``IMREAD_COLOR``) then BGR -> RGB. So EXIF orientation is applied; grayscale, palette, alpha, 16-bit and CMYK
images become 8-bit colour as OpenCV converts them. One deliberate difference: a truncated or undecodable file
is a failure with a reason, where OpenCV would hand the originals a half-grey image to encode.

Preprocessing reproduces ``SAM2Transforms`` (ToTensor -> Resize(R, R) bilinear
with antialias -> ImageNet Normalize) with plain torch ops, which also run on a
GPU, in batches, and need no torchvision.
"""

from __future__ import annotations

import numpy as np

from npzfix_core.errors import InputError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
_JPEG, _PNG = b"\xff\xd8", b"\x89PNG\r\n\x1a\n"


class ImageError(InputError):
    pass


def truncated(data: bytes) -> bool:
    """A JPEG whose last scan has no end-of-image marker after it, or a PNG without its IEND chunk: data was cut
    short (OpenCV would fill the missing rows with grey). Exact for JPEG: inside entropy-coded data a 0xFF
    byte is always followed by 0x00 or a restart marker, so the last SOS marker found is the last scan's, and
    an EOI after it is the real end (an EXIF thumbnail's markers come before the main image's)."""
    if data.startswith(_JPEG):
        sos = data.rfind(b"\xff\xda")
        return sos < 0 or data.find(b"\xff\xd9", sos) < 0
    if data.startswith(_PNG):
        return data.rfind(b"IEND") < 0
    return False


def load_rgb(path: str) -> np.ndarray:
    """HxWx3 uint8 RGB, by the rule above; ``ImageError`` with the reason when the file cannot be used."""
    import cv2

    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ImageError(f"cannot read image {path}: {exc}") from exc
    if truncated(data):
        raise ImageError(f"truncated image {path}: the data ends before the image does")
    try:
        a = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ImageError(f"cannot decode image {path}: {exc}") from exc
    if a is None:
        raise ImageError(f"cannot decode image {path}: not an image OpenCV can read")
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ImageError(f"unexpected decoded image {a.dtype}{a.shape} for {path}")
    return cv2.cvtColor(a, cv2.COLOR_BGR2RGB)


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

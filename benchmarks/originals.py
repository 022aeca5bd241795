"""The original feature tools' per-image loop, as the benchmarks measure it beside npzfix (benchmarks only: it loads
every member with ``allow_pickle=True`` and rewrites the whole file in place, as the originals did)."""

import os
import time

import numpy as np


def feature_loop(teacher, images: list[str], npzs: list[str], resolution: int) -> float:
    """Seconds for the originals' loop over ``images``: OpenCV decode, encode one image, load all, savez, replace."""
    import cv2

    from npzfix_core.images import preprocess

    t = time.perf_counter()
    for img, npz in zip(images, npzs):
        rgb = cv2.cvtColor(cv2.imread(img), cv2.COLOR_BGR2RGB)  # the original's decode
        feats = teacher.encode(preprocess([rgb], resolution, teacher.device))
        with np.load(npz, allow_pickle=True) as z:  # as the original loads
            arrays = {k: z[k] for k in z.files}
        arrays.update({k: v.cpu().numpy() for k, v in feats.items()}, feature_flag=np.array(1, np.uint8))
        np.savez(npz + ".tmp.npz", **arrays)
        os.replace(npz + ".tmp.npz", npz)
    return time.perf_counter() - t

"""A picture of a cache: a few images with their edge maps and a PCA colouring of P4.

One glance tells whether edges follow object boundaries and whether features
have spatial structure (a broken teacher gives noise or a flat colour).
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from npzfix_core import discovery, outputs, store

TILE = 192


def pca_rgb(p4: np.ndarray) -> np.ndarray:
    """(…, C, H, W) features -> (H, W, 3) uint8, first three principal components."""
    f = p4.reshape(p4.shape[-3], -1).T.astype(np.float64)
    f -= f.mean(axis=0)
    _, _, vt = np.linalg.svd(f, full_matrices=False)
    proj = f @ vt[:3].T
    lo, hi = np.percentile(proj, 1, axis=0), np.percentile(proj, 99, axis=0)
    proj = np.clip((proj - lo) / np.maximum(hi - lo, 1e-9), 0, 1)
    return (proj.reshape(p4.shape[-2], p4.shape[-1], 3) * 255).astype(np.uint8)


def _tile(img: np.ndarray) -> np.ndarray:
    return cv2.resize(img, (TILE, TILE), interpolation=cv2.INTER_NEAREST if img.shape[0] < TILE else cv2.INTER_AREA)


def render(npz_paths: list[str], out_png: str, n: int = 4) -> str | None:
    """Write a grid (rows: files; columns: image, edges, P4 PCA) and return its path; None if nothing to show."""
    rows = []
    feature = outputs.computed_names()[0]  # the finest level (P4)
    for p in npz_paths[:n]:
        try:
            a = store.read_arrays(p, [*outputs.EDGE_MAPS[:2], feature])
        except (store.NpzError, OSError):
            continue
        blank = np.full((TILE, TILE, 3), 40, np.uint8)
        img_path = discovery.find_image(p)
        img = cv2.imread(img_path, cv2.IMREAD_COLOR) if img_path else None
        img = _tile(img) if img is not None else blank
        edge = a.get(outputs.EDGE_MAPS[0], a.get(outputs.EDGE_MAPS[1]))
        e = _tile(np.repeat((edge * 255).astype(np.uint8)[:, :, None], 3, axis=2)) if edge is not None else blank
        overlay = img.copy()
        overlay[e[:, :, 0] > 0] = (0, 0, 255)
        feat = _tile(cv2.cvtColor(pca_rgb(a[feature]), cv2.COLOR_RGB2BGR)) if feature in a else blank
        rows.append(np.hstack([img, overlay, feat]))
    if not rows:
        return None
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    cv2.imwrite(out_png, np.vstack(rows))
    return out_png

"""Method-B edges: npzfix vs the original formula, side by side in one run, one core each.

Run by hand: ``.venv/bin/python benchmarks/bench_edges.py [--images 5] [--masks 100]``.
Target (issue 2): >= 30x faster per core on typical 1500x2250 images with ~100
masks, and bit-identical (checked on every image here).
Also times end-to-end ``npzfix edges --workers 2`` on 200 generated files and
reports its peak memory (max RSS of the process tree).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np

from npzfix_core import synth
from npzfix_core.edges import ImageAnnotations, method_b, method_b_reference


def per_image(n_images: int, n_masks: int, h: int, w: int) -> None:
    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    anns = [
        ImageAnnotations(h, w, [a["segmentation"] for a in synth.make_annotations(rng, h, w, n_masks)])
        for _ in range(n_images)
    ]
    method_b(anns[0])  # warm the per-size support cache, as a real run does once
    t_fast = t_ref = 0.0
    for ann in anns:
        t = time.perf_counter()
        ref = method_b_reference(ann)
        t_ref += time.perf_counter() - t
        t = time.perf_counter()
        fast = method_b(ann)
        t_fast += time.perf_counter() - t
        assert all(np.array_equal(fast[s], ref[s]) for s in ref), "not bit-identical"
    print(
        f"edges per image ({h}x{w}, {n_masks} masks, {n_images} images, 1 thread): "
        f"original {1000 * t_ref / n_images:.1f} ms, npzfix {1000 * t_fast / n_images:.1f} ms, "
        f"speed-up {t_ref / t_fast:.1f}x, bit-identical on all"
    )


def end_to_end(n_files: int, workers: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        synth.generate(d, synth.SynthSpec(n=n_files, seed=1, masks=100, states=("fresh", "with_256"), feature_hw=64))
        gen = time.perf_counter() - t
        npz_dir = os.path.join(d, "extracted")
        t = time.perf_counter()
        p = subprocess.run(
            [
                os.path.join(os.path.dirname(sys.executable), "npzfix"),
                "edges",
                "--npz-dir",
                npz_dir,
                "--workers",
                str(workers),
            ],
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - t
        assert p.returncode == 0, p.stdout + p.stderr
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        size = sum(os.path.getsize(os.path.join(npz_dir, f)) for f in os.listdir(npz_dir)) / n_files / 2**20
        print(
            f"end to end: npzfix edges --workers {workers} on {n_files} files (1500x2250, 100 masks, "
            f"{size:.1f} MB NPZ): {wall:.1f} s wall, {n_files / wall:.1f} files/s, "
            f"peak RSS of one process {peak:.0f} MB (data generated in {gen:.0f} s)"
        )


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=5)
    ap.add_argument("--masks", type=int, default=100)
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    per_image(a.images, a.masks, 1500, 2250)
    per_image(a.images, a.masks, 2250, 1500)
    if a.files:
        end_to_end(a.files, a.workers)

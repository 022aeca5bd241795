"""Method-B edges: npzfix vs the original formula, side by side in one run, one core each.

Run by hand: ``.venv/bin/python benchmarks/bench_edges.py [--images 5] [--masks 100] [--files 60]``.
Per image: SA-1B-like masks (multi-component objects, parts of objects, holes, thin structures,
log-uniform sizes) and, for comparison with earlier figures, the older ellipse masks; bit-identical
output is checked on every image. End to end, on real-format caches (vfmkd's full key set, pickled ``masks``
of the image's size in 4 files of 5, a deflated box-prompt file in 4): ``npzfix edges --worker-processes 1``
(with its fsync) against the original script's loop (probe the flag, load every member with
``allow_pickle=True``, recompute with the original formula, ``np.savez`` the whole file in place) on the same
files, one core each; the output of both is compared key by key.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import cv2
import numpy as np
from bench_cost_curves import measure

from npzfix_core import synth
from npzfix_core.edges import ImageAnnotations, method_b, method_b_reference, parse_sa1b


def per_image(n_images: int, n_masks: int, h: int, w: int, style: str) -> float:
    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    anns = [
        ImageAnnotations(h, w, [a["segmentation"] for a in synth.make_annotations(rng, h, w, n_masks, style)])
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
        f"edges per image ({h}x{w}, {n_masks} {style} masks, {n_images} images, 1 thread): "
        f"original {1000 * t_ref / n_images:.1f} ms, npzfix {1000 * t_fast / n_images:.1f} ms, "
        f"speed-up {t_ref / t_fast:.1f}x, bit-identical on all"
    )
    return t_ref / t_fast


def original_loop(npz_dir: str, json_dir: str) -> None:
    """What update_edge_maps_from_npz.py does per file: probe edge_flag, load every member (pickles too), the
    original formula, ``np.savez`` of the whole file in place (no temp, no fsync)."""
    for name in sorted(os.listdir(npz_dir)):
        if not name.endswith("_features.npz"):
            continue
        path = os.path.join(npz_dir, name)
        with np.load(path, allow_pickle=True) as probe:
            if "edge_flag" in probe.files and int(probe["edge_flag"]) == 1:
                continue
        with open(os.path.join(json_dir, name.replace("_features.npz", ".json"))) as f:
            maps = method_b_reference(parse_sa1b(json.load(f)), 3)
        with np.load(path, allow_pickle=True) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["edge_64x64"], arrays["edge_32x32"] = maps[64], maps[32]
        if "edge_256x256" in arrays:
            arrays["edge_256x256"] = maps[256]
        arrays["edge_flag"], arrays["edge_version"] = np.array(1, np.uint8), np.array("B_v1")
        np.savez(path, **arrays)


def same_result(original_dir: str, npzfix_dir: str) -> int:
    """Every key of the original's output equals npzfix's (pickled members unpickled here to compare); npzfix's
    files hold only its provenance beside them. Returns the keys compared."""
    n = 0
    for name in sorted(os.listdir(original_dir)):
        with np.load(os.path.join(original_dir, name), allow_pickle=True) as a, np.load(
            os.path.join(npzfix_dir, name), allow_pickle=True
        ) as b:
            assert set(b.files) - set(a.files) == {"edge_provenance"}, name
            for k in a.files:
                x, y = a[k], b[k]
                if x.dtype.hasobject:
                    assert x.shape == y.shape and all(np.array_equal(u, v) for u, v in zip(x.flat, y.flat)), (name, k)
                else:
                    assert x.dtype == y.dtype and np.array_equal(x, y), (name, k)
                n += 1
    return n


def end_to_end(n_files: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        synth.generate(d, synth.SynthSpec(n=n_files, seed=1, masks=100, states=("fresh", "with_256"), feature_hw=64))
        gen = time.perf_counter() - t
        npz_dir = os.path.join(d, "extracted")
        pristine = os.path.join(d, "pristine")
        shutil.copytree(npz_dir, pristine)
        size = sum(os.path.getsize(os.path.join(npz_dir, f)) for f in os.listdir(npz_dir)) / n_files / 2**20
        cv2.setNumThreads(1)
        t = time.perf_counter()
        original_loop(npz_dir, d)
        t_orig = time.perf_counter() - t
        by_original = os.path.join(d, "by_original")
        os.rename(npz_dir, by_original)
        shutil.copytree(pristine, npz_dir)
        os.environ.update(OMP_NUM_THREADS="1", OPENCV_FOR_THREADS_NUM="1")
        npzfix = os.path.join(os.path.dirname(sys.executable), "npzfix")
        cmd = [npzfix, "edges", "--npz-dir", npz_dir, "--json-dir", d, "--worker-processes", "1"]
        t_new, peak = measure(cmd)  # from a small parent
        keys = same_result(by_original, npz_dir)
        print(
            f"end to end, {n_files} real-format files (1500x2250, 100 SA-1B-like masks, pickled masks, "
            f"{size:.1f} MB NPZ), one core: original loop {n_files / t_orig:.2f} files/s, "
            f"npzfix edges (fsync'd) {n_files / t_new:.2f} files/s ({t_orig / t_new:.1f}x); "
            f"{keys} keys equal to the original's output; peak RSS {peak:.0f} MB (data generated in {gen:.0f} s)"
        )


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=5)
    ap.add_argument("--masks", type=int, default=100)
    ap.add_argument("--files", type=int, default=60)
    a = ap.parse_args()
    for style in ("sa1b", "ellipses"):
        per_image(a.images, a.masks, 1500, 2250, style)
        per_image(a.images, a.masks, 2250, 1500, style)
    if a.files:
        end_to_end(a.files)

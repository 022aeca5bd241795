"""GPU benchmark for a user's CUDA machine: bare encoder vs npzfix pipeline vs the original loop.

Run: ``.venv/bin/python benchmarks/bench_features_gpu.py --weights sam2.1_hiera_base_plus.pt --device cuda:1``
(or ``--random-init 0`` with ``--config configs/sam2.1/sam2.1_hiera_b+.yaml``: same FLOPs, no checkpoint).
Prints images/s for: the bare encoder on pre-decoded device tensors (batch 1..32, fp32 and bf16),
our pipeline (threaded decode, batched device preprocessing, async copies, writer pool) and the
original per-image loop (PIL decode -> transform -> encoder -> load-all/np.savez/replace).

Expected figures, reasoned from FLOPs (not measured here: this project's sessions have no GPU).
Hiera-B+ at 1024 is ~528 GFLOP per image (trunk ~85%, FPN neck the rest).
* A100 (312 TFLOP/s bf16 dense, 19.5 fp32 / 156 TF32): attention-heavy Hiera reaches ~35-45% of
  peak in bf16 at batch >= 8, i.e. ~110-140 TFLOP/s -> ~200-260 img/s; fp32 with TF32 ~60-80 img/s.
* H100 (990 TFLOP/s bf16 dense): the same share gives ~350-445 TFLOP/s -> ~650-850 img/s; 400 img/s is a
  conservative floor (the figure bench_pipeline_ceiling.py compares with).
* At those rates the host must decode, check and write an image every 1.2-2.5 ms. Measured without a GPU
  (bench_pipeline_ceiling.py, instant encoder): ~26 ms of host CPU per image (OpenCV JPEG decode ~17 ms of
  it, the 9 MB NPZ merge + fsync most of the rest), so 15 cores feed ~550-650 img/s and need ~5 GB/s of
  NPZ writes; the original loop, serial, is decode+write bound at ~1 / (0.025 + 0.03) ~ 15-20 img/s with
  the GPU mostly idle.
* nvjpeg would move decode to the GPU, but its IDCT and chroma upsampling are not libjpeg-turbo's: pixels
  would differ from the documented rule (Pillow's), so features would not be reproducible on a CPU host.
  Not used; decode stays exact and is scaled with threads instead.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def _bare(teacher, decoded: list, batches: list[int], seconds: float, precision: str) -> None:
    """The encoder alone on device tensors, per batch size, for ``seconds`` each."""
    import torch

    from npzfix_core.images import preprocess

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for bs in batches:
        x = preprocess(decoded[:bs], teacher.resolution, teacher.device)
        teacher.encode(x)
        sync()
        n, t = 0, time.perf_counter()
        while time.perf_counter() - t < seconds:
            teacher.encode(x)
            n += bs
        sync()
        print(f"bare encoder {precision} batch {bs:2d}: {n / (time.perf_counter() - t):7.1f} img/s")


def _pipeline(spec, teacher, root: str, workers: int, precision: str) -> None:
    """``run_features`` over the directory (forced), at batch 8 and 16."""
    from npzfix_core.feature_repair import FeatureRequest, run_features

    for bs in (8, 16):
        t = time.perf_counter()
        rep = run_features(
            FeatureRequest("bulk", spec, root=root, batch_size=bs, decode_threads=workers, writers=4, force=True),
            teacher=teacher,
            progress=False,
        )
        dt = time.perf_counter() - t
        tm = rep.timings
        print(
            f"pipeline {precision} batch {bs}: {rep.counts['updated'] / dt:7.1f} img/s "
            f"(encoder busy {tm['encoder_s'] / dt:.0%}, waited on decode {tm['wait_decode_s']:.1f} s)"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights")
    ap.add_argument("--config", default="configs/sam2.1/sam2.1_hiera_b+.yaml")
    ap.add_argument("--random-init", type=int)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--workers", type=int, default=max(os.cpu_count() - 2, 2))
    ap.add_argument("--batches", default="1,2,4,8,16,32")
    ap.add_argument("--resolution", type=int, default=1024)
    ap.add_argument("--seconds", type=float, default=10.0, help="per bare-encoder measurement")
    ap.add_argument(
        "--smoke", action="store_true", help="allow a CPU: checks the script runs (tests/e2e/test_benchmarks.py)"
    )
    a = ap.parse_args()

    import torch
    from originals import feature_loop

    from npzfix_core import synth
    from npzfix_core.images import load_rgb
    from npzfix_core.teacher import TeacherSpec, build

    if not torch.cuda.is_available() and not a.smoke:
        raise SystemExit("no CUDA device: this benchmark is for a GPU machine (see bench_features.py for the CPU)")
    res_px, loop_n = a.resolution, min(32, a.images)
    with tempfile.TemporaryDirectory(dir=".") as d:
        res = synth.generate(
            d, synth.SynthSpec(n=a.images, seed=0, masks=3, states=("fresh",), feature_hw=res_px // 16)
        )
        imgs = [os.path.join(d, os.path.basename(p).replace("_features.npz", ".jpg")) for p in res.npz]
        decoded = [load_rgb(p) for p in imgs[:32]]
        for precision in ("bf16", "fp32"):
            spec = TeacherSpec(
                weights=a.weights,
                config=a.config if not a.weights else None,
                random_init_seed=a.random_init,
                device=a.device,
                precision=precision,
                resolution=res_px,
            )
            teacher = build(spec)
            _bare(teacher, decoded, [int(b) for b in a.batches.split(",")], a.seconds, precision)
            _pipeline(spec, teacher, d, a.workers, precision)
            dt = feature_loop(teacher, imgs[:loop_n], res.npz[:loop_n], res_px)
            print(f"original loop {precision}: {loop_n / dt:7.1f} img/s")


if __name__ == "__main__":
    main()

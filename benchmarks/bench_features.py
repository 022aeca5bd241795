"""Feature pipeline vs the original per-image loop vs the bare encoder, side by side in one run (CPU).

Run by hand: ``.venv/bin/python benchmarks/bench_features.py [--images 12] [--resolution 1024]``.
Hiera-tiny, seeded random weights (identical FLOPs to the real checkpoint).
* original loop: per image decode -> transform -> encoder (batch 1) -> load-all + np.savez + replace;
* npzfix pipeline: ``run_features`` (threaded decode, batched encoder, writer pool);
* bare encoder: the same batches on pre-decoded, pre-transformed tensors, no I/O.
Pipeline efficiency = pipeline images/s / bare encoder images/s (target >= 0.9: I/O hidden).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def _bare_encoder(teacher, imgs: list[str], resolution: int, batch_size: int) -> float:
    """Seconds for the encoder alone over the same batches, decoded and preprocessed beforehand."""
    import torch

    from npzfix_core.images import load_rgb, preprocess

    batches = [
        torch.stack([preprocess([load_rgb(p)], resolution, teacher.device)[0] for p in imgs[i : i + batch_size]])
        for i in range(0, len(imgs), batch_size)
    ]
    t = time.perf_counter()
    for b in batches:
        teacher.encode(b)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--resolution", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2, help="decode threads of the pipeline")
    a = ap.parse_args()

    import torch
    from originals import feature_loop

    from npzfix_core import synth
    from npzfix_core.feature_repair import FeatureRequest, run_features
    from npzfix_core.images import load_rgb, preprocess
    from npzfix_core.teacher import TeacherSpec, build

    spec = TeacherSpec(random_init_seed=0, resolution=a.resolution, device="cpu")
    teacher = build(spec)
    fhw = a.resolution // 16
    with tempfile.TemporaryDirectory(dir=".") as d:
        res = synth.generate(d, synth.SynthSpec(n=a.images, seed=0, masks=5, states=("fresh",), feature_hw=fhw))
        imgs = [os.path.join(d, os.path.basename(p).replace("_features.npz", ".jpg")) for p in res.npz]

        # warm-up (allocator, kernels)
        teacher.encode(preprocess([load_rgb(imgs[0])], a.resolution, teacher.device))

        t_orig = feature_loop(teacher, imgs, res.npz, a.resolution)

        t = time.perf_counter()
        rep = run_features(
            FeatureRequest("bulk", spec, root=d, batch_size=a.batch_size, decode_threads=a.workers, force=True),
            teacher=teacher,
            progress=False,
        )
        t_pipe = time.perf_counter() - t
        assert rep.counts["updated"] == a.images, rep.summary()

        t_bare = _bare_encoder(teacher, imgs, a.resolution, a.batch_size)

    n = a.images
    print(
        f"Hiera-tiny @ {a.resolution}, {n} images 1500x2250, CPU {torch.get_num_threads()} threads, batch {a.batch_size}"
    )
    print(f"  original per-image loop: {n / t_orig:.3f} img/s")
    print(f"  npzfix pipeline:         {n / t_pipe:.3f} img/s  ({t_orig / t_pipe:.2f}x the original)")
    print(f"  bare encoder:            {n / t_bare:.3f} img/s")
    print(f"  pipeline efficiency:     {t_bare / t_pipe:.2f} (pipeline / bare encoder; target >= 0.9)")
    print(
        f"  encoder busy in pipeline: {rep.timings['encoder_s'] / t_pipe:.2f} of wall time, "
        f"waited on decode {rep.timings['wait_decode_s']:.2f} s"
    )


if __name__ == "__main__":
    main()

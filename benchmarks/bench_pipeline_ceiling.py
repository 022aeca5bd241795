"""How fast the feature pipeline can feed an encoder: everything but the encoder, measured.

Run by hand: ``.venv/bin/python benchmarks/bench_pipeline_ceiling.py [--images 48] [--workers 1,2]``.
The encoder is replaced by one that returns correctly shaped zeros at once (THIS BENCHMARK ONLY: the
product and its tests always run the real SAM2 encoder). The real pipeline runs around it: discovery,
skip checks, decode threads, preprocessing (on the device when it is a GPU: here the CPU), the writer
pool, fsync. Reported: images/s per number of decode threads, the scaling against linear, where the time
went, bytes written per second, and what that means for a 16-core GPU host next to the encoder rate of
Hiera-B+ at 1024 on an H100 (FLOP-based, see bench_features_gpu.py).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

# Hiera-B+ at 1024 is ~528 GFLOP per image (bench_features_gpu.py). An H100 has 990 TFLOP/s of dense bf16;
# attention-heavy Hiera reaches ~35-45 % of peak at batch >= 8 (as reasoned there for the A100), i.e.
# ~350-445 TFLOP/s -> ~650-850 img/s; 400 img/s is a conservative floor. Reasoned, not measured here.
H100_ENCODER_IMG_S = (400, 850)


class _InstantEncoder:
    """Returns zeros of the encoder's output shapes: measures the pipeline without the model."""

    def __init__(self, resolution: int):
        self.s = resolution // 16

    def __call__(self, batch):
        import torch

        b = batch.shape[0]
        p4 = torch.zeros((b, 256, self.s, self.s), device=batch.device)
        p5 = torch.zeros((b, 256, self.s // 2, self.s // 2), device=batch.device)
        return {"backbone_fpn": [p4, p4, p4, p5]}


def _device_preprocess(images, resolution, device):
    """Stands in for SAM2's preprocessing on a GPU (a batched resize there costs ~1 ms): shaped zeros."""
    import torch

    return torch.zeros((len(images), 3, resolution, resolution), device=device)


def run(d: str, workers: int, resolution: int, batch: int, gpu_like: bool):
    import torch

    from npzfix_core import images
    from npzfix_core.feature_repair import FeatureRequest, run_features
    from npzfix_core.teacher import Teacher, TeacherSpec, provenance

    spec = TeacherSpec(random_init_seed=0, resolution=resolution, device="cpu")
    teacher = Teacher(_InstantEncoder(resolution), torch.device("cpu"), resolution, "fp32", provenance(spec))
    on = "device" if gpu_like else "workers"  # GPU host: decode threads only decode; the device preprocesses
    req = FeatureRequest("bulk", spec, root=d, batch_size=batch, workers=workers, force=True, preprocess_on=on)
    real = images.preprocess
    if gpu_like:
        images.preprocess = _device_preprocess
    before = sum(os.path.getsize(os.path.join(d, "extracted", f)) for f in os.listdir(os.path.join(d, "extracted")))
    try:
        t = time.perf_counter()
        rep = run_features(req, teacher=teacher, progress=False)
        wall = time.perf_counter() - t
    finally:
        images.preprocess = real
    assert rep.failed == 0, rep.summary()
    return rep, wall, before


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--resolution", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", default=",".join(str(w) for w in sorted({1, 2, os.cpu_count() or 2})))
    a = ap.parse_args()

    import torch

    from npzfix_core import synth

    torch.set_num_threads(1)  # the encoder is instant: leave the cores to decode and writes
    fhw = a.resolution // 16
    with tempfile.TemporaryDirectory(dir=".", prefix="tmp_bench_ceiling_") as d:
        synth.generate(d, synth.SynthSpec(n=a.images, seed=0, masks=5, states=("fresh",), feature_hw=fhw))
        run(d, 1, a.resolution, a.batch_size, True)  # warm the page cache and the allocator
        for gpu_like, label in (
            (False, "CPU host: decode threads also preprocess"),
            (True, "GPU-like host: decode only"),
        ):
            rows = []
            for w in (int(x) for x in a.workers.split(",")):
                rep, wall, nbytes = run(d, w, a.resolution, a.batch_size, gpu_like)
                rows.append((w, a.images / wall, rep.timings, nbytes / wall))
            base = rows[0][1]
            print(f"pipeline ceiling, instant encoder, {a.images} JPEGs 1500x2250 -> {a.resolution}, {label}")
            for w, ips, tm, bps in rows:
                n = a.images
                print(
                    f"  decode threads {w:2d}: {ips:6.1f} img/s ({ips / (base * w):.2f} of linear), "
                    f"NPZ written {bps / 2**20:.0f} MB/s (fsync'd); busy per image: decode "
                    f"{1000 * tm['decode_busy_s'] / n:.1f} ms, encode {1000 * tm['encoder_s'] / n:.1f} ms, "
                    f"write {1000 * tm['write_busy_s'] / n:.1f} ms; main loop waited on decode {tm['wait_decode_s']:.2f} s"
                )
    per_core = rows[0][1]
    host = per_core * 15  # 16 cores, one left to the main loop and the device
    lo, hi = H100_ENCODER_IMG_S
    print(
        f"  -> a 16-core GPU host feeds ~{host:.0f} img/s at {per_core:.1f} img/s per decode core; Hiera-B+ @1024 "
        f"on an H100 encodes ~{lo}-{hi} img/s: "
        + ("decode is the ceiling" if host < lo else "the encoder is the ceiling")
    )


if __name__ == "__main__":
    main()

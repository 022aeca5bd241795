"""The tolerance of ``check features`` and ``sample_valid``, measured: the distance between stored features and
the teacher's for files the same teacher wrote (must pass) and for every kind of wrong feature (must fail),
side by side in one run; then what the check costs per partition.

Run by hand: ``.venv/bin/python benchmarks/bench_verify.py [--images 6] [--resolution 256]
[--config configs/sam2.1/sam2.1_hiera_t.yaml]``. Random-init SAM2 (seed 0; a real checkpoint has the same
FLOPs, its bf16 distance may differ: rerun with ``--weights``). Columns: ``1 - cosine`` and max abs error over
max |teacher|, min..max over the images and over P4/P5; the verdict under the default tolerance.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def _table(cases: dict, ref: list, tol) -> None:
    """Per case: the range of 1 - cosine and of max error / max |teacher| over images and keys, and the verdict."""
    from npzfix_core.verify import compare

    print(f"{'case':42s} {'1 - cosine':>22s} {'max err / max |teacher|':>24s}  verdict")
    for name, got in cases.items():
        m = [compare(k, s[k], r[k]) for s, r in zip(got, ref) for k in r]
        dist = [1 - x.cosine for x in m]
        rel = [x.rel_error for x in m]
        per = len(ref[0])  # keys per image
        passed = sum(all(tol.accepts(x) for x in m[i : i + per]) for i in range(0, len(m), per))
        verdict = f"passes {passed}/{len(got)}" if passed == len(got) else f"caught {len(got) - passed}/{len(got)}"
        ranges = f"{min(dist):>10.2g} .. {max(dist):<9.2g} {min(rel):>10.2g} .. {max(rel):<9.2g}"
        print(f"{name:42s} {ranges}  {verdict}")
    print(f"{'another input resolution':42s} {'(size differs)':>22s} {'':>24s}  caught by structure")


def _cost(npzs, d, ref, imgs, spec, fp32, tol, a, times) -> None:
    """The check's cost per partition: read, decode, encode and compare ``--check-files`` files, with the model
    already built (the run built it) and from nothing (a partition whose run had nothing to do); and the FLOP-based
    estimate for an H100."""
    from npzfix_core import store
    from npzfix_core.teacher import LazyTeacher
    from npzfix_core.verify import MATCH, timed_verify

    t_build, t_fp32, t_bf16 = times
    for p, r in zip(npzs, ref):
        store.update(p, {**r, "IMAGE_EMB_S16": r["P4_S16"]})
    files = [(p, os.path.join(d, os.path.basename(p).replace("_features.npz", ".jpg"))) for p in npzs]
    files = files[: a.check_files]
    verdicts, summary = timed_verify(files, LazyTeacher(fp32), tol)
    assert all(v.status == MATCH for v in verdicts), verdicts
    t = time.perf_counter()
    timed_verify(files, LazyTeacher(spec), tol)
    cold = time.perf_counter() - t
    print(
        f"\nsample_valid cost per partition ({len(files)} files, this CPU): {summary.seconds:.2f} s with the run's "
        f"model, {cold:.2f} s building it first (model build {t_build:.2f} s); encode {t_fp32:.3f} s/img fp32, "
        f"{t_bf16:.3f} s/img bf16"
    )
    from torch.utils.flop_counter import FlopCounterMode

    from npzfix_core.images import preprocess

    with FlopCounterMode(display=False) as fc:
        fp32.encode(preprocess(imgs[:1], a.resolution, fp32.device))
    flops = fc.get_total_flops()
    per_img = flops / (0.4 * 990e12)  # H100 SXM dense bf16 990 TFLOP/s at an assumed 40% utilisation
    print(
        f"on an H100 (estimate): {flops / 1e9:.1f} GFLOP per image at {a.resolution} -> {per_img * 1e3:.2f} ms "
        f"at 40% of 990 bf16 TFLOP/s; {len(files)} files ~{len(files) * per_img * 1e3:.1f} ms of GPU + "
        f"~{len(files) * 15} ms JPEG decode (SA-1B 1500x2250), plus the model build/load when the run built none"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--config", default=None, help="SAM2 config (default Hiera-tiny)")
    ap.add_argument("--weights", default=None, help="a real checkpoint (default: random-init seed 0)")
    ap.add_argument("--check-files", type=int, default=2, help="files per partition sample_valid recomputes")
    a = ap.parse_args()

    from npzfix_core import synth
    from npzfix_core.images import load_rgb
    from npzfix_core.teacher import TeacherSpec, build
    from npzfix_core.verify import Tolerance, encode_images

    seed = None if a.weights else 0
    spec = TeacherSpec(weights=a.weights, config=a.config, random_init_seed=seed, resolution=a.resolution)
    tol = Tolerance()
    t = time.perf_counter()
    fp32 = build(spec)
    t_build = time.perf_counter() - t
    bf16 = build(TeacherSpec(**{**spec.__dict__, "precision": "bf16"}))
    other = build(TeacherSpec(**{**spec.__dict__, "weights": None, "random_init_seed": 1}))
    with tempfile.TemporaryDirectory(dir=".") as d:
        res = synth.generate(d, synth.SynthSpec(n=a.images, seed=0, masks=5, states=("fresh",)))
        imgs = [load_rgb(os.path.join(d, os.path.basename(p).replace("_features.npz", ".jpg"))) for p in res.npz]
        t = time.perf_counter()
        ref = encode_images(fp32, imgs, batch_size=1)
        t_fp32 = (time.perf_counter() - t) / len(imgs)
        t = time.perf_counter()
        in_bf16 = encode_images(bf16, imgs, batch_size=len(imgs))
        t_bf16 = (time.perf_counter() - t) / len(imgs)
        rng = np.random.default_rng(0)
        cases = {
            f"same teacher fp32, batch {len(imgs)} vs 1": encode_images(fp32, imgs, batch_size=len(imgs)),
            "float16-stored cache of fp32 features": [{k: v.astype(np.float16) for k, v in r.items()} for r in ref],
            "bf16 vs fp32": in_bf16,
            "another image of the shard": ref[1:] + ref[:1],
            "the same image read as BGR": encode_images(fp32, [np.ascontiguousarray(i[:, :, ::-1]) for i in imgs]),
            "mirrored image": encode_images(fp32, [np.ascontiguousarray(i[:, ::-1]) for i in imgs]),
            "another checkpoint (seed 1)": encode_images(other, imgs),
            "N(0,1) noise": [{k: rng.standard_normal(v.shape) for k, v in r.items()} for r in ref],
        }
        print(
            f"teacher {spec.resolved_config()} ({a.weights or 'random-init:0'}), input {a.resolution}, "
            f"{len(imgs)} images; tolerance: {tol.describe()}"
        )
        _table(cases, ref, tol)

        _cost(res.npz, d, ref, imgs, spec, fp32, tol, a, (t_build, t_fp32, t_bf16))

if __name__ == "__main__":
    main()

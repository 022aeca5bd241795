"""Cost curves: `npzfix edges --dry-run` and `npzfix features --dry-run` over 1k, 10k, 100k files in one
directory. Time and peak RSS must grow linearly with files, memory stay flat (streaming; no per-file state
beyond the report's failures).

Run by hand: ``.venv/bin/python benchmarks/bench_cost_curves.py [--points 1000,10000,100000]``.
Files are hard links to one small NPZ, JSON and JPEG (each name distinct), so the data costs no disk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile


def build(d: str, n: int) -> str:
    from npzfix_core import synth

    proto = synth.generate(
        os.path.join(d, "proto"),
        synth.SynthSpec(n=1, seed=0, sizes=((48, 64),), masks=4, states=("fresh",), feature_hw=4),
    )
    npz = proto.npz[0]
    stem = os.path.basename(npz).replace("_features.npz", "")
    shard = os.path.join(d, "shard")
    ext = os.path.join(shard, "extracted")
    os.makedirs(ext)
    sources = [npz, os.path.join(proto.root, stem + ".json"), os.path.join(proto.root, stem + ".jpg")]
    for i in range(n):
        if i and i % 60000 == 0:  # a file system allows ~65,000 links per inode: start a fresh copy
            copies = [f"{p}.{i}" for p in sources]
            for a, b in zip(sources, copies):
                shutil.copy(a, b)
            sources = copies
        os.link(sources[0], os.path.join(ext, f"f{i:07d}_features.npz"))
        os.link(sources[1], os.path.join(shard, f"f{i:07d}.json"))
        os.link(sources[2], os.path.join(shard, f"f{i:07d}.jpg"))
    return shard


def measure(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one command, in a fresh child process each."""
    code = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); w = time.perf_counter() - t; "
        "assert p.returncode in (0, 1), p.stderr[-2000:]; "
        "print(w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, check=True).stdout
    wall, rss = out.split()
    return float(wall), float(rss)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", default="1000,10000,100000")
    a = ap.parse_args()
    npzfix = os.path.join(os.path.dirname(sys.executable), "npzfix")
    rows = []
    for n in (int(x) for x in a.points.split(",")):
        with tempfile.TemporaryDirectory(dir=".", prefix="tmp_bench_curves_") as d:
            shard = build(d, n)
            ext = os.path.join(shard, "extracted")
            e = measure([npzfix, "edges", "--npz-dir", ext, "--dry-run"])
            f = measure([npzfix, "features", "--root", shard, "--random-init", "0", "--dry-run"])
            rows.append((n, e, f))
    print("files      edges --dry-run            features --dry-run")
    for n, (ew, er), (fw, fr) in rows:
        print(
            f"{n:>7}  {ew:7.1f} s {1e3 * ew / n:6.2f} ms/file {er:5.0f} MiB   "
            f"{fw:7.1f} s {1e3 * fw / n:6.2f} ms/file {fr:5.0f} MiB"
        )


if __name__ == "__main__":
    main()

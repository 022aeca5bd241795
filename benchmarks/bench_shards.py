"""Training shards after a repair: npzfix's rebuild of the one shard that changed, beside the user's tool rebuilding
every shard, and beside the floor (reading that shard's member files and writing their bytes once), in one run.

Run by hand: ``.venv/bin/python benchmarks/bench_shards.py [--files 40] [--shard-size 10]``. Real-format caches
(1500x2250 images, vfmkd's full key set, pickled masks); the user's tool is ``create_sa1b_tar_shards.py
--overwrite-existing`` (every shard written again, one process), re-implemented here from its description.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from npzfix_core import edge_repair, shards, synth  # noqa: E402
from npzfix_core.requests import EdgeRequest  # noqa: E402


def users_tool(npz_dir: str, image_dir: str, out: str, shard_size: int) -> int:
    """What create_sa1b_tar_shards.py --overwrite-existing does: the sorted pairs, every shard written again."""
    names = sorted(n for n in os.listdir(npz_dir) if n.endswith("_features.npz"))
    written = 0
    for i in range(0, len(names), shard_size):
        path = os.path.join(out, f"sa1b_shard_{i // shard_size:05d}.tar")
        with tarfile.open(path, "w", bufsize=4 << 20, format=tarfile.PAX_FORMAT) as tar:
            for n in names[i : i + shard_size]:
                stem = n[: -len("_features.npz")]
                tar.add(os.path.join(npz_dir, n), arcname=n)
                tar.add(os.path.join(image_dir, stem + ".jpg"), arcname=stem + ".jpg")
        written += os.path.getsize(path)
    return written


def floor(files: list[str], out: str) -> float:
    """Read each member file once and write its bytes once (fsync'd): what any rebuild of that shard must cost."""
    t = time.perf_counter()
    with open(out, "wb") as f:
        for p in files:
            with open(p, "rb") as src:
                shutil.copyfileobj(src, f, 4 << 20)
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=40)
    ap.add_argument("--shard-size", type=int, default=10)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        res = synth.generate(
            os.path.join(d, "sa1b"),
            synth.SynthSpec(n=a.files, seed=0, masks=20, states=("fresh", "with_256"), feature_hw=64),
        )
        ext, out, theirs = os.path.join(res.root, "extracted"), os.path.join(d, "shards"), os.path.join(d, "theirs")
        os.makedirs(theirs)
        first = shards.sync(ext, out, shard_size=a.shard_size)
        one = sorted(os.listdir(ext))[a.shard_size + 1]  # a member of the second shard
        edge_repair.run_edges(EdgeRequest(ext, glob=one), progress=False)  # the repair
        t = time.perf_counter()
        theirs_bytes = users_tool(ext, res.root, theirs, a.shard_size)
        t_theirs = time.perf_counter() - t
        t = time.perf_counter()
        after = shards.sync(ext, out, shard_size=a.shard_size)
        t_ours = time.perf_counter() - t
        (rebuilt,) = after.rebuilt
        members = [m for m in shards.pairs(ext)[0] if shards.where(out, m.stem)["shard"] == rebuilt["shard"]]
        t_floor = floor([p for m in members for p in (m.npz, m.image)], os.path.join(d, "floor.bin"))
        mb = rebuilt["bytes"] / 2**20
        print(
            f"{a.files} real-format pairs ({theirs_bytes / a.files / 2**20:.1f} MB each) in {first.shards} shards of "
            f"{a.shard_size}; one NPZ repaired:\n"
            f"  user's tool (--overwrite-existing, every shard): {t_theirs:.2f} s, {theirs_bytes / 2**20:.0f} MiB\n"
            f"  npzfix shards (the one shard holding it):        {t_ours:.2f} s, {mb:.0f} MiB "
            f"({t_theirs / t_ours:.1f}x faster)\n"
            f"  floor (read its members, write them once):       {t_floor:.2f} s "
            f"(npzfix = {t_ours / t_floor:.2f}x the floor, including the change detection over all "
            f"{after.members} members and the manifest)"
        )


if __name__ == "__main__":
    main()

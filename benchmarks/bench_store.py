"""NPZ store vs the obvious NumPy code, side by side on the same ~5 MB files.

Run by hand: ``.venv/bin/python benchmarks/bench_store.py``.
Targets (issue 2): the "already done?" check >= 30x cheaper than a full load;
an edges update >= 1.5x faster than load-all + ``np.savez`` + replace. Both
sides write durably (fsync) in the "durable" row; the original tools did not
fsync, so a row without fsync on either side is printed too.
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from npzfix_core import store


def _file(path: str) -> None:
    rng = np.random.default_rng(0)
    np.savez(
        path,
        P4_S16=rng.standard_normal((1, 256, 64, 64), dtype=np.float32),
        P5_S32=rng.standard_normal((1, 256, 32, 32), dtype=np.float32),
        edge_64x64=np.zeros((64, 64), np.uint8),
        edge_32x32=np.zeros((32, 32), np.uint8),
        edge_flag=np.array(1, np.uint8),
        edge_version=np.array("B_v1"),
        name=np.array("x"),
    )


def _timeit(fn, n: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def main() -> None:
    with tempfile.TemporaryDirectory(dir=".") as d:
        path = os.path.join(d, "a_features.npz")
        _file(path)
        mb = os.path.getsize(path) / 2**20

        def full_load():
            with np.load(path, allow_pickle=True) as z:
                return {k: z[k] for k in z.files}["edge_flag"]

        def lazy():
            return store.read_flags(path, ["edge_flag", "edge_version", "edge_provenance"])

        tf, tl = _timeit(full_load, 30), _timeit(lazy, 300)
        print(
            f"skip check on a {mb:.1f} MB NPZ: full load {1e3 * tf:.2f} ms, npzfix {1e3 * tl:.3f} ms, {tf / tl:.0f}x cheaper"
        )

        new = {
            "edge_64x64": np.ones((64, 64), np.uint8),
            "edge_32x32": np.ones((32, 32), np.uint8),
            "edge_flag": np.array(1, np.uint8),
            "edge_version": np.array("B_v1"),
        }

        for durable in (True, False):

            def naive():
                with np.load(path, allow_pickle=True) as z:
                    arrays = {k: z[k] for k in z.files}
                arrays.update(new)
                tmp = path + ".tmp.npz"
                with open(tmp, "wb") as f:
                    np.savez(f, **arrays)
                    if durable:
                        f.flush()
                        os.fsync(f.fileno())
                os.replace(tmp, path)

            def ours():
                store.update(path, new, durable=durable)

            tn, to = _timeit(naive, 20), _timeit(ours, 20)
            label = "durable (fsync)" if durable else "no fsync"
            print(
                f"edges update of a {mb:.1f} MB NPZ, {label}: load-all+savez+replace {1e3 * tn:.1f} ms, "
                f"npzfix {1e3 * to:.1f} ms, {tn / to:.1f}x faster"
            )


if __name__ == "__main__":
    main()

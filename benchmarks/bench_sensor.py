"""Sensor tick cost: first tick (lists everything) vs a tick on an unchanged tree vs a tick after one new file.

Run by hand: ``.venv/bin/python benchmarks/bench_sensor.py [--dirs 2000] [--files 50]``.
The claim: a tick costs O(directories) stats plus O(new work) listings, never a re-scan of every file.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dirs", type=int, default=2000)
    ap.add_argument("--files", type=int, default=50)
    a = ap.parse_args()

    from dagster import DagsterInstance, build_sensor_context

    from npzfix_dagster.resources import DatasetRoots
    from npzfix_dagster.sensors import sa1b_new_dirs_sensor

    with tempfile.TemporaryDirectory(dir=".") as d, tempfile.TemporaryDirectory() as home:
        root = os.path.join(d, "sa1b")
        for i in range(a.dirs):
            ext = os.path.join(root, f"sa_{i:06d}", "extracted")
            os.makedirs(ext)
            for j in range(a.files):
                open(os.path.join(ext, f"sa_{i}_{j}_features.npz"), "wb").close()
        roots = DatasetRoots(sa1b_root=root)
        with DagsterInstance.ephemeral(tempdir=home) as instance:

            def tick(cursor):
                t = time.perf_counter()
                r = sa1b_new_dirs_sensor(
                    build_sensor_context(instance=instance, cursor=cursor, resources={"roots": roots})
                )
                return r, time.perf_counter() - t

            r1, t1 = tick(None)
            cursor, backlog, drain_t = r1.cursor, 0, []
            while True:  # the per-tick cap leaves a backlog, served from the cursor
                r, t = tick(cursor)
                cursor = r.cursor
                if not r.run_requests:
                    break
                backlog += len(r.run_requests)
                drain_t.append(t)
            r2, t2 = tick(cursor)
            open(os.path.join(root, "sa_000007", "extracted", "new_features.npz"), "wb").close()
            r3, t3 = tick(r2.cursor)
        n = a.dirs * a.files
        print(f"{a.dirs} directories, {n} NPZ files, cursor {len(r1.cursor) / 1024:.0f} KiB")
        print(
            f"  first tick (lists everything):  {t1 * 1e3:8.1f} ms, {len(r1.run_requests)} run requests (cap per tick)"
        )
        print(
            f"  backlog ticks:                  {1e3 * sum(drain_t) / max(len(drain_t), 1):8.1f} ms each, "
            f"{backlog} more run requests over {len(drain_t)} ticks"
        )
        print(f"  unchanged tree:                 {t2 * 1e3:8.1f} ms, {len(r2.run_requests)} run requests")
        print(f"  one new file in one directory:  {t3 * 1e3:8.1f} ms, {len(r3.run_requests)} run request(s)")
        print(f"  first / unchanged: {t1 / t2:.1f}x")


if __name__ == "__main__":
    main()

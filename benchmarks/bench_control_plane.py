"""Control-plane cost at SA-1B shape: sensor and schedule ticks over 1,000 partitions, SQLite vs PostgreSQL.

Run by hand: ``.venv/bin/python benchmarks/bench_control_plane.py [--dirs 1000] [--files 1100]``.
Default: 1,000 shard directories of 1,100 NPZ names each = 1.1 M files, 1/10 of SA-1B's 11 M. Each
directory holds one real (done) NPZ and hard links to it, so the schedule's sampled flag reads see real
files. Every partition carries a latest materialization of both assets with the metadata a real run
records. The claim: a tick costs O(directories), and only the sensor's first listing grows with files.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

SA1B_FILES = 11_000_000
# What the asset page and its Partitions tab ask for (the health bar, the partition list, their statuses).
ASSET_PAGE = """
query($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode {
      partitionStats { numMaterialized numPartitions numFailed numMaterializing }
      partitionKeysByDimension { name partitionKeys }
      assetPartitionStatuses { ... on DefaultPartitionStatuses { materializedPartitions failedPartitions } }
    }
  }
}
"""


def build_tree(root: str, dirs: int, files: int) -> None:
    import numpy as np

    from npzfix_core import store

    proto = os.path.join(root, "proto.npz")
    os.makedirs(root)
    np.savez(proto, P4_S16=np.zeros((1, 256, 4, 4), np.float32))
    store.update(proto, {"feature_flag": np.array(1, np.uint8), "edge_flag": np.array(1, np.uint8)})
    for i in range(dirs):
        ext = os.path.join(root, f"sa_{i:06d}", "extracted")
        os.makedirs(ext)
        first = os.path.join(ext, f"sa_{i * files}_features.npz")
        shutil.copy(proto, first)
        for j in range(1, files):
            os.link(first, os.path.join(ext, f"sa_{i * files + j}_features.npz"))
    os.remove(proto)


def record_materializations(instance, root: str, keys: list[str], teacher_prov: dict) -> None:
    """The latest materialization of both assets per partition, with the metadata the assets write."""
    from dagster import AssetMaterialization, MetadataValue

    from npzfix_core import discovery

    for key in keys:
        snap = discovery.snapshot(os.path.join(root, key, "extracted"))
        common = {
            "updated": 1100,
            "failed": 0,
            "dir_mtime_ns": MetadataValue.text(str(snap.mtime_ns)),
            "npz_signature": MetadataValue.text(snap.signature),
        }
        instance.report_runless_asset_event(
            AssetMaterialization(
                "sa1b_features_fixed",
                partition=key,
                metadata={**common, "provenance": MetadataValue.json(teacher_prov)},
            )
        )
        instance.report_runless_asset_event(
            AssetMaterialization(
                "edges_B_v1", partition=key, metadata={**common, "provenance": MetadataValue.json({"kernel_size": 3})}
            )
        )


def measure(instance, root: str, keys: list[str]) -> dict[str, float]:
    from dagster import build_schedule_context, build_sensor_context

    from npzfix_dagster.resources import DatasetRoots, Sam2Teacher
    from npzfix_dagster.schedules import sa1b_daily_recheck
    from npzfix_dagster.sensors import sa1b_new_dirs_sensor

    roots = DatasetRoots(sa1b_root=root)
    teacher = Sam2Teacher(random_init_seed=0, resolution=256, device="cpu")
    out: dict[str, float] = {}

    def sensor(cursor):
        t = time.perf_counter()
        r = sa1b_new_dirs_sensor(build_sensor_context(instance=instance, cursor=cursor, resources={"roots": roots}))
        return r, time.perf_counter() - t

    r, out["sensor first tick"] = sensor(None)
    cursor = r.cursor
    ticks = 1
    while r.run_requests:  # drain the per-tick cap from the cursor
        r, _ = sensor(cursor)
        cursor = r.cursor
        ticks += 1
    out["sensor ticks to drain"] = ticks
    r, out["sensor unchanged tick"] = sensor(cursor)
    new = os.path.join(root, "sa_new", "extracted")
    os.makedirs(new)
    shutil.copy(
        os.path.join(root, keys[0], "extracted", os.listdir(os.path.join(root, keys[0], "extracted"))[0]),
        os.path.join(new, "x_features.npz"),
    )
    r, out["sensor one new dir"] = sensor(r.cursor)
    assert len(r.run_requests) == 1
    shutil.rmtree(os.path.dirname(new))
    with build_schedule_context(instance=instance, resources={"roots": roots, "teacher": teacher}) as ctx:
        t = time.perf_counter()
        res = sa1b_daily_recheck(ctx)
        out["schedule tick"] = time.perf_counter() - t
    assert not isinstance(res, list), [q.tags for q in res][:3]  # every partition done
    return out


def ui_timings(home: str, root: str, env_extra: dict, n_partitions: int) -> dict[str, float]:
    """dagster-webserver on the instance: seconds for the asset page's GraphQL, per asset (median of 3)."""
    import socket
    import subprocess
    import sys
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, DAGSTER_HOME=home, NPZFIX_SA1B_ROOT=root, **env_extra)
    web = os.path.join(os.path.dirname(sys.executable), "dagster-webserver")
    proc = subprocess.Popen(
        [web, "-w", os.path.join(here, "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
        env=env,
        cwd=here,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    out: dict[str, float] = {}
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        for asset in ("sa1b_features_fixed", "edges_B_v1"):
            times = []
            for _ in range(3):
                body = json.dumps({"query": ASSET_PAGE, "variables": {"key": {"path": [asset]}}}).encode()
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/graphql", data=body, headers={"Content-Type": "application/json"}
                )
                t = time.perf_counter()
                with urllib.request.urlopen(req, timeout=120) as r:
                    data = json.loads(r.read())
                times.append(time.perf_counter() - t)
            node = data["data"]["assetNodeOrError"]
            assert node["partitionStats"]["numPartitions"] == n_partitions, data
            out[f"UI asset page {asset}"] = sorted(times)[1]
    finally:
        os.killpg(proc.pid, 15)
        proc.wait()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dirs", type=int, default=1000)
    ap.add_argument("--files", type=int, default=1100)
    ap.add_argument("--no-postgres", action="store_true")
    a = ap.parse_args()

    from dagster import DagsterInstance

    from npzfix_tools import local_postgres
    from npzfix_dagster.resources import Sam2Teacher

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory(dir=here, prefix="tmp_bench_cp_") as d:
        root = os.path.join(d, "sa1b")
        t = time.perf_counter()
        build_tree(root, a.dirs, a.files)
        print(
            f"tree: {a.dirs} dirs x {a.files} files = {a.dirs * a.files:,} NPZ names ({time.perf_counter() - t:.0f} s to build)"
        )
        keys = [f"sa_{i:06d}" for i in range(a.dirs)]  # each names sa_XXXXXX/extracted
        prov = Sam2Teacher(random_init_seed=0, resolution=256, device="cpu").provenance().as_dict()
        results = {}

        def on_instance(name: str, config: str, env: dict) -> None:
            home = os.path.join(d, f"{name}_home")
            os.makedirs(home)
            shutil.copy(os.path.join(here, "deploy", config), os.path.join(home, "dagster.yaml"))
            os.environ.update(env)
            with DagsterInstance.from_config(home) as inst:
                inst.add_dynamic_partitions("sa1b_dirs", keys)
                record_materializations(inst, root, keys, prov)
                results[name] = measure(inst, root, keys)
            results[name].update(ui_timings(home, root, env, len(keys)))

        on_instance("SQLite", "dagster.yaml", {})
        if not a.no_postgres:
            pgdata = os.path.join(d, "pg")
            url, _ = local_postgres.start(pgdata)
            try:
                on_instance("PostgreSQL", "dagster-postgres.yaml", {"NPZFIX_PG_URL": url})
            finally:
                local_postgres.stop(pgdata)
    scale = SA1B_FILES / (a.dirs * a.files)
    names = list(next(iter(results.values())))
    print(f"\n{'':36}" + "".join(f"{k:>14}" for k in results))
    for n in names:
        unit = "" if n.endswith("drain") else " s"
        if not all(n in r for r in results.values()):
            continue
        print(f"{n:36}" + "".join(f"{r[n]:>12.2f}{unit:2}" for r in results.values()))
    first = max(r["sensor first tick"] for r in results.values())
    print(
        f"\nfull SA-1B ({SA1B_FILES:,} files, {scale:.0f}x these): the first sensor listing grows with files, "
        f"~{first * scale:.0f} s on this disk if done in one tick -> spread over ticks by the 30 s listing budget "
        f"(NPZFIX_SENSOR_LIST_BUDGET_S); the other ticks grow with directories only and stay as above."
    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()

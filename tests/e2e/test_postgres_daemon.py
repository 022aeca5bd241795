"""The team deployment end to end: a real PostgreSQL 18, the real daemon and webserver, a backfill of every
partition launched the way the UI's "Materialize all" does (GraphQL ``launchPartitionBackfill``)."""

import json
import os
import shutil
import subprocess
import time

import numpy as np
import pytest
from tests.support import BIN, NPZFIX
from tests.support.daemon_support import BACKFILL, graphql, intervals, max_concurrent, overlap, start_daemon_and_webserver, stop

from npzfix_core import store, synth
from npzfix_core.edges import method_b_reference, parse_sa1b
from npzfix_tools import local_postgres

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RES = 256
SHARDS = ("sa_000000", "sa_000001", "sa_000002")

@pytest.mark.slow
def test_backfill_on_postgres_with_the_daemon(tmp_path):
    pgdata = str(tmp_path / "pg")
    url, pg_pid = local_postgres.start(pgdata)
    procs = []
    try:
        home = tmp_path / "home"
        home.mkdir()
        shutil.copy(os.path.join(REPO, "deploy", "dagster-postgres.yaml"), home / "dagster.yaml")
        root = str(tmp_path / "sa1b")
        data = {
            s: synth.generate(
                os.path.join(root, s),
                synth.SynthSpec(n=2, seed=i, sizes=((120, 160),), masks=8, states=("fresh", "with_256"), feature_hw=16),
            )
            for i, s in enumerate(SHARDS)
        }
        env = dict(
            os.environ,
            DAGSTER_HOME=str(home),
            NPZFIX_PG_URL=url,
            NPZFIX_SA1B_ROOT=root,
            NPZFIX_RANDOM_INIT_SEED="0",
            NPZFIX_RESOLUTION=str(RES),
            NPZFIX_DEVICE="cpu",
            NPZFIX_PREVIEW_DIR=str(tmp_path / "previews"),
        )
        p = subprocess.run([NPZFIX, "partitions", "sync"], env=env, capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
        procs, port = start_daemon_and_webserver(env, REPO, BIN, str(tmp_path))
        keys = list(SHARDS)  # short keys: sa_000000 names sa_000000/extracted
        t0 = time.monotonic()
        res = graphql(
            port,
            BACKFILL,
            {
                "params": {
                    "assetSelection": [{"path": ["sa1b_features_fixed"]}, {"path": ["edges_B_v1"]}],
                    "partitionNames": keys,
                }
            },
        )
        assert res["data"]["launchPartitionBackfill"]["__typename"] == "LaunchBackfillSuccess", res

        from dagster import DagsterInstance, DagsterRunStatus

        os.environ["NPZFIX_PG_URL"] = url  # the test reads the same instance
        instance = DagsterInstance.from_config(str(home))
        deadline = time.monotonic() + 420
        done = (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)
        while time.monotonic() < deadline:
            runs = instance.get_runs()
            covered = {r.tags.get("dagster/partition") for r in runs if r.status in done}
            if covered >= set(keys) and all(r.status in done for r in runs):
                break
            time.sleep(2)
        wall = time.monotonic() - t0
        runs = instance.get_runs()
        assert runs and all(r.status == DagsterRunStatus.SUCCESS for r in runs), [(r.run_id, r.status) for r in runs]
        assert {r.tags.get("dagster/partition") for r in runs} == set(keys)
        assert all(r.tags.get("dagster/backfill") for r in runs)

        # files are right
        for s, res_ in data.items():
            for p in res_.npz:
                got = store.read_arrays(p)
                assert int(got["feature_flag"]) == 1 and got["P4_S16"].shape == (1, 256, 16, 16)
                stem = os.path.basename(p).replace("_features.npz", "")
                with open(os.path.join(res_.root, stem + ".json")) as f:
                    want = method_b_reference(parse_sa1b(json.load(f)), 3)
                np.testing.assert_array_equal(got["edge_64x64"], want[64])

        # metadata and check results live in PostgreSQL
        from dagster import AssetKey

        from npzfix_dagster.schedules import latest_metadata

        for asset in ("sa1b_features_fixed", "edges_B_v1"):
            md = latest_metadata(instance, asset)
            assert set(md) == set(keys) and all(m["updated"] == 2 and m["failed"] == 0 for m in md.values())
            assert instance.get_materialized_partitions(AssetKey(asset)) == set(keys)
        import psycopg2

        with psycopg2.connect(url.replace("+psycopg2", "")) as conn, conn.cursor() as cur:
            cur.execute("select count(*) from event_logs where dagster_event_type = 'ASSET_CHECK_EVALUATION'")
            assert cur.fetchone()[0] == 2 * 2 * len(keys)  # 2 checks x 2 assets x partitions

        # pool gpu (limit 1): feature steps never overlap; edge steps run beside them
        steps = intervals(instance, [r.run_id for r in runs])
        feats, edges = steps["sa1b_features_fixed"], steps["edges_B_v1"]
        assert len(feats) == len(edges) == len(keys)
        assert max_concurrent(feats) == 1
        assert any(overlap(e, f) for e in edges for f in feats)
        t_first = min(s for s, _ in feats + edges)
        print(
            f"backfill of {len(keys)} partitions: {len(runs)} runs, {wall:.0f} s wall; max concurrent feature steps "
            f"{max_concurrent(feats)}, edge steps {max_concurrent(edges)}"
        )
        for name, iv in (("features", feats), ("edges", edges)):
            print(name, " ".join(f"[{s - t_first:.1f}, {e - t_first:.1f}]" for s, e in sorted(iv)))
    finally:
        for p in procs:
            stop(p)
        assert local_postgres.stop(pgdata)
        try:
            os.kill(pg_pid, 0)
            raise AssertionError("postgres still running")
        except ProcessLookupError:
            pass

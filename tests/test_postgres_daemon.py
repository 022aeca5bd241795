"""The team deployment end to end: a real PostgreSQL 18, the real daemon and webserver, a backfill of every
partition launched the way the UI's "Materialize all" does (GraphQL ``launchPartitionBackfill``)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

import numpy as np
import pytest
from conftest import BIN, NPZFIX

from npzfix_core import store, synth
from npzfix_core.edges import method_b_reference, parse_sa1b
from npzfix_tools import local_postgres

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RES = 256
SHARDS = ("sa_000000", "sa_000001", "sa_000002")

BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on UnauthorizedError { message }
    ... on PartitionSetNotFoundError { message }
    ... on InvalidStepError { invalidStepKey }
    ... on InvalidOutputError { stepKey invalidOutputName }
  }
}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(port: int, query: str, variables: dict) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def _wait_http(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "webserver exited"
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("webserver did not come up")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group by PID (it owns code servers and run workers), then SIGKILL."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _intervals(instance, run_ids) -> dict[str, list[tuple[float, float]]]:
    """step key -> [(start, end)] over the runs, from STEP_START and STEP_SUCCESS/FAILURE events."""
    from dagster import DagsterEventType

    out: dict[str, list[tuple[float, float]]] = {}
    for rid in run_ids:
        starts = {}
        for e in instance.all_logs(rid):
            if not e.is_dagster_event:
                continue
            t = e.dagster_event.event_type
            if t == DagsterEventType.STEP_START:
                starts[e.step_key] = e.timestamp
            elif t in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
                out.setdefault(e.step_key, []).append((starts[e.step_key], e.timestamp))
    return out


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def _max_concurrent(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])  # an end sorts before a start
    n = best = 0
    for _, d in edges:
        n += d
        best = max(best, n)
    return best


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
        ws = os.path.join(REPO, "workspace.yaml")
        port = _free_port()
        for cmd in (
            [os.path.join(BIN, "dagster-daemon"), "run", "-w", ws],
            [os.path.join(BIN, "dagster-webserver"), "-w", ws, "-h", "127.0.0.1", "-p", str(port)],
        ):
            log = open(tmp_path / f"{os.path.basename(cmd[0])}.log", "w")
            procs.append(
                subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            )
        _wait_http(port, procs[1])
        keys = list(SHARDS)  # short keys: sa_000000 names sa_000000/extracted
        t0 = time.monotonic()
        res = _graphql(
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
        steps = _intervals(instance, [r.run_id for r in runs])
        feats, edges = steps["sa1b_features_fixed"], steps["edges_B_v1"]
        assert len(feats) == len(edges) == len(keys)
        assert _max_concurrent(feats) == 1
        assert any(_overlap(e, f) for e in edges for f in feats)
        t_first = min(s for s, _ in feats + edges)
        print(
            f"backfill of {len(keys)} partitions: {len(runs)} runs, {wall:.0f} s wall; max concurrent feature steps "
            f"{_max_concurrent(feats)}, edge steps {_max_concurrent(edges)}"
        )
        for name, iv in (("features", feats), ("edges", edges)):
            print(name, " ".join(f"[{s - t_first:.1f}, {e - t_first:.1f}]" for s, e in sorted(iv)))
    finally:
        for p in procs:
            _stop(p)
        assert local_postgres.stop(pgdata)
        try:
            os.kill(pg_pid, 0)
            raise AssertionError("postgres still running")
        except ProcessLookupError:
            pass

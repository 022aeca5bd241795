"""The real `npzfix` and `dg` CLIs in subprocesses against a temporary DAGSTER_HOME."""

import json
import os
import subprocess

from tests.support import BIN, NPZFIX, sha
from tests.support.dagster_support import env_for, shard

from npzfix_core import store


def test_cli_partitions_sync_and_dagster_asset_materialize(tmp_path):
    root = str(tmp_path / "sa1b")
    res = shard(root, "extracted_parent", n=2, states=("fresh", "fresh"))
    env = env_for(tmp_path, os.path.join(root, "extracted_parent"))
    p = subprocess.run([NPZFIX, "partitions", "sync"], env=env, capture_output=True, text=True)
    assert p.returncode == 0 and "sa1b_dirs: added 1 (extracted)" in p.stdout, p.stdout + p.stderr
    before = [sha(q) for q in res.npz]
    cmd = [
        os.path.join(BIN, "dagster"),
        "asset",
        "materialize",
        "-m",
        "npzfix_dagster.definitions",
        "--select",
        "edges_B_v1",
        "--partition",
        "extracted",
    ]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert all(sha(q) != b for q, b in zip(res.npz, before))
    assert all(store.read_flags(q, ["edge_flag"])["edge_flag"] == 1 for q in res.npz)
    p = subprocess.run(cmd[:-1] + ["not_a_partition"], env=env, capture_output=True, text=True)
    assert p.returncode == 1
    p = subprocess.run([NPZFIX, "partitions", "list"], env=env, capture_output=True, text=True)
    assert "  extracted" in p.stdout


def test_dg_checks_lists_and_launches_this_project(tmp_path):
    """Dagster 1.13's own tooling works here: `dg check defs`, `dg list defs`, `dg launch`."""
    root = str(tmp_path / "sa1b")
    res = shard(root, "sa_000060", n=2, states=("fresh", "fresh"))
    env = env_for(tmp_path, root)
    dg = os.path.join(BIN, "dg")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p = subprocess.run([dg, "check", "defs"], env=env, cwd=repo, capture_output=True, text=True)
    assert p.returncode == 0 and "All definitions loaded successfully" in p.stdout + p.stderr, p.stderr[-2000:]
    p = subprocess.run([dg, "list", "defs", "--json"], env=env, cwd=repo, capture_output=True, text=True)
    listed = json.loads(p.stdout)
    keys = {a["asset_key"] for a in listed["assets"]}
    assert {"sa1b_features_fixed", "train_test_features_fixed", "edges_B_v1"} <= keys, keys
    assert subprocess.run([NPZFIX, "partitions", "sync"], env=env, capture_output=True).returncode == 0
    cmd = [dg, "launch", "--assets", "edges_B_v1", "--partition", "sa_000060"]
    p = subprocess.run(cmd, env=env, cwd=repo, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert all(store.read_flags(q, ["edge_flag"])["edge_flag"] == 1 for q in res.npz)

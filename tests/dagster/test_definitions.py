"""The code location loads (without torch, beside hydra's ANTLR) and `dagster dev` serves the UI."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from tests.support import BIN
from tests.support.dagster_support import env_for


def test_definitions_load_without_torch():
    code = "import sys, npzfix_dagster.definitions as d; assert 'torch' not in sys.modules and 'sam2' not in sys.modules; print(len(d.defs.assets))"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == "7", p.stderr  # three caches, two shard sets, two NPZ sources


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_dagster_dev_serves_ui_and_graphql(tmp_path):
    env = env_for(tmp_path, str(tmp_path))
    port = _free_port()
    proc = subprocess.Popen(
        [
            os.path.join(BIN, "dagster"),
            "dev",
            "-w",
            os.path.join(os.path.dirname(__file__), "..", "..", "workspace.yaml"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline, body = time.time() + 120, None
        while time.time() < deadline:
            try:
                q = json.dumps(
                    {"query": "{ version repositoriesOrError { ... on RepositoryConnection { nodes { name } } } }"}
                ).encode()
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/graphql", data=q, headers={"Content-Type": "application/json"}
                )
                body = json.loads(urllib.request.urlopen(req, timeout=5).read())
                if body.get("data", {}).get("repositoriesOrError", {}).get("nodes"):
                    break
            except OSError:
                pass
            time.sleep(1)
        assert body and body["data"]["version"], body
        html = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
        assert "<html" in html.lower()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_dagster_selection_grammar_and_sam2_hydra_share_a_process():
    """Dagster's selection parser needs ANTLR 4.13, hydra (sam2) needs 4.9: both must work in one process."""
    code = (
        "import npzfix_dagster.definitions\n"
        "from dagster import AssetSelection\n"
        "s = AssetSelection.from_string('key:edges_B_v1 or key:sa1b_features_fixed')\n"
        "from npzfix_core.teacher import TeacherSpec, build\n"
        "t = build(TeacherSpec(random_init_seed=0, resolution=64))\n"
        "s2 = AssetSelection.from_string('edges_B_v1')\n"
        "print('ok', t.resolution)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == "ok 64", p.stdout + p.stderr[-2000:]


def test_missing_antlr_bridge_fails_loudly_with_the_fix(tmp_path):
    env = dict(os.environ, NPZFIX_ANTLR413_DIR=str(tmp_path / "nowhere"))
    p = subprocess.run(
        [sys.executable, "-c", "import npzfix_dagster.definitions"], capture_output=True, text=True, env=env
    )
    assert p.returncode != 0
    assert "AntlrBridgeError" in p.stderr and "-m npzfix_dagster.antlr_compat install" in p.stderr

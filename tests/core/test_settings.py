"""Settings come from the environment at the edges only: the CLI and Dagster read it when a run starts, the core
takes what it is given (to worker processes too), and a bad value names its variable."""

import json
import os

import pytest

from npzfix_core import edges, synth
from npzfix_core.edge_repair import run_edges
from npzfix_core.requests import EdgeRequest
from npzfix_core.settings import ENV, Settings
from tests.support import run_cli


def test_from_env_reads_each_variable_and_names_a_bad_one(tmp_path):
    assert Settings.from_env({}) == Settings()
    env = {
        "NPZFIX_LOCK_TIMEOUT_S": "2.5",
        "NPZFIX_MAX_PIXELS": "1000",
        "NPZFIX_STATE_DIR": str(tmp_path),
        "NPZFIX_GPU_LEASE_DIR": str(tmp_path / "leases"),
        "NPZFIX_GPU_LEASE_WAIT_S": "7",
        "NPZFIX_MAX_PIXELS_TYPO": "1",
    }
    s = Settings.from_env(env)
    assert (s.lock_timeout_s, s.max_pixels, s.gpu_lease_wait_s) == (2.5, 1000, 7.0)
    assert (s.state_dir, s.gpu_lease_dir) == (str(tmp_path), str(tmp_path / "leases"))
    assert Settings.from_env({"NPZFIX_MAX_PIXELS": ""}) == Settings()  # empty: unset
    with pytest.raises(ValueError, match="NPZFIX_MAX_PIXELS='lots' is not a valid int"):
        Settings.from_env({"NPZFIX_MAX_PIXELS": "lots"})
    with pytest.raises(ValueError, match="NPZFIX_JPEG_DECODER is no longer read"):  # not silently ignored
        Settings.from_env({"NPZFIX_JPEG_DECODER": "pil"})
    assert set(ENV) == {f.name for f in __import__("dataclasses").fields(Settings)}


def _shard(tmp_path):
    res = synth.generate(
        tmp_path / "s", synth.SynthSpec(n=4, seed=5, sizes=((40, 60),), masks=3, states=("fresh",), feature_hw=4)
    )
    return res, os.path.dirname(res.npz[0])


def test_the_core_ignores_the_environment_and_carries_its_settings_into_worker_processes(tmp_path, monkeypatch):
    res, ext = _shard(tmp_path)
    monkeypatch.setenv("NPZFIX_MAX_PIXELS", "10")  # read by the edges only: core calls are not affected
    doc = json.load(open(os.path.join(res.root, os.path.basename(res.npz[0]).replace("_features.npz", ".json"))))
    assert edges.parse_sa1b(doc).height == 40
    report = run_edges(EdgeRequest(ext, worker_processes=2, settings=Settings(max_pixels=100)), progress=False)
    assert report.counts["failed"] == 4  # both worker processes held the request's limit, not the default
    assert all("over the 100-pixel limit (NPZFIX_MAX_PIXELS)" in f["reason"] for f in report.failures)
    assert run_edges(EdgeRequest(ext, worker_processes=2), progress=False).counts["updated"] == 4


def test_the_cli_reads_the_environment_when_it_runs(tmp_path):
    _, ext = _shard(tmp_path)
    rep = tmp_path / "rep"
    run_cli("edges", "--npz-dir", ext, "--report", rep, check_rc=1, env=dict(os.environ, NPZFIX_MAX_PIXELS="100"))
    failures = json.load(open(f"{rep}.json"))["failures"]
    assert len(failures) == 4 and all("over the 100-pixel limit" in f["reason"] for f in failures)
    p = run_cli("edges", "--npz-dir", ext, check_rc=2, env=dict(os.environ, NPZFIX_LOCK_TIMEOUT_S="soon"))
    assert "NPZFIX_LOCK_TIMEOUT_S='soon' is not a valid float" in p.stderr

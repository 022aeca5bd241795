"""Every NPZFIX_* variable a run reads is checked when the code location loads, by name, with what it accepts."""

import os
import subprocess
import sys

import pytest

from npzfix_dagster import env as resources
from npzfix_dagster.env import SettingError, check_environment

GARBAGE = {
    "NPZFIX_MAX_CONCURRENT_STEPS": ["-1", "0", "abc"],
    "NPZFIX_EDGE_KERNEL": ["0", "-3", "x"],
    "NPZFIX_EDGE_RULE": ["method_c", "B_v1"],
    "NPZFIX_EDGE_WORKERS": ["-1", "two"],
    "NPZFIX_BATCH_SIZE": ["-1", "1.5"],
    "NPZFIX_DECODE_THREADS": ["-2"],
    "NPZFIX_RESOLUTION": ["-128", "100", "abc"],
    "NPZFIX_DEVICE": ["gpu", "cuda:x", "cuda:-1"],
    "NPZFIX_PRECISION": ["fp64"],
    "NPZFIX_GPUS": ["-1", ",", "1,,2", "abc"],
    "NPZFIX_RANDOM_INIT_SEED": ["seed"],
    "NPZFIX_SENSOR_LIST_BUDGET_S": ["abc", "0", "-5", "nan", "inf"],
    "NPZFIX_SLURM_CPUS": ["-4", "many"],
    "NPZFIX_EXECUTION": ["kubernetes"],
    "NPZFIX_SLURM_MAX_PENDING_S": ["0", "nan", "soon"],
    "NPZFIX_LOCK_TIMEOUT_S": ["nan", "inf", "-1", "soon"],
    "NPZFIX_GPU_LEASE_WAIT_S": ["nan", "-1"],
    "NPZFIX_MAX_PIXELS": ["0", "lots"],
    "NPZFIX_JPEG_DECODER": ["pil"],
}


@pytest.mark.parametrize("name,value", [(n, v) for n, vs in GARBAGE.items() for v in vs])
def test_each_bad_value_stops_the_load_naming_its_variable(monkeypatch, name, value):
    for var in list(os.environ):
        if var.startswith("NPZFIX_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingError) as ei:
        check_environment()
    message = str(ei.value)
    assert name in message and "\n" not in message


def test_good_values_load(monkeypatch, tmp_path):
    weights = tmp_path / "sam2.1_hiera_t.pt"
    weights.write_bytes(b"")
    good = {
        "NPZFIX_MAX_CONCURRENT_STEPS": "1", "NPZFIX_EDGE_KERNEL": "5", "NPZFIX_EDGE_WORKERS": "0",
        "NPZFIX_BATCH_SIZE": "0", "NPZFIX_RESOLUTION": "512", "NPZFIX_DEVICE": "cuda:2", "NPZFIX_PRECISION": "bf16",
        "NPZFIX_GPUS": "1,2,4,5,6,7", "NPZFIX_SAM2_WEIGHTS": str(weights), "NPZFIX_SENSOR_LIST_BUDGET_S": "12.5",
        "NPZFIX_LOCK_TIMEOUT_S": "0", "NPZFIX_EXECUTION": "SLURM",
    }  # fmt: skip
    for k, v in good.items():
        monkeypatch.setenv(k, v)
    check_environment()
    assert resources.default_edge_kernel() == 5 and resources.max_concurrent_steps() == 1
    assert resources.teacher_from_env().gpus == "1,2,4,5,6,7"


def test_dagster_refuses_to_load_a_code_location_with_a_bad_setting(tmp_path):
    """Before: NPZFIX_MAX_CONCURRENT_STEPS=-1 passed `dagster definitions validate` and a run then busy-spun."""
    env = dict(os.environ, NPZFIX_MAX_CONCURRENT_STEPS="-1", DAGSTER_HOME=str(tmp_path))
    dagster = os.path.join(os.path.dirname(sys.executable), "dagster")
    p = subprocess.run(
        [dagster, "definitions", "validate", "-m", "npzfix_dagster.definitions"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert p.returncode != 0
    assert "NPZFIX_MAX_CONCURRENT_STEPS='-1' is out of range: steps of one run at once, >= 1" in p.stdout + p.stderr

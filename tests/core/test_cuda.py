"""The GPU path on a CUDA machine, against the CPU reference. Skipped where there is no CUDA device (CI);
a session that is lent a GPU runs ``pytest tests/core/test_cuda.py`` (with a CUDA build of torch) and
``benchmarks/bench_features_gpu.py``.

Tolerances: cuDNN may run the convolutions in TF32, so fp32 features are held to 1e-2 of the largest
value (the CPU path is held to 1e-5 in test_features); bf16 to 0.1, as on the CPU.
"""

import glob
import os

import numpy as np
import pytest
from tests.support import run_cli
from tests.core.test_features import RES, _image_of, _reference_model, _shard, reference

from npzfix_core import devices, store
from npzfix_core.feature_repair import FeatureRequest, run_features
from npzfix_core.teacher import TeacherSpec

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture(autouse=True)
def _leases(tmp_path, monkeypatch):
    monkeypatch.setenv(devices.LEASE_DIR_ENV, str(tmp_path / "leases"))


def _close(got, want, rel):
    return np.abs(got - want).max() <= rel * np.abs(want).max()


@pytest.mark.parametrize("precision,rel", [("fp32", 1e-2), ("bf16", 0.1)])
def test_cuda_pipeline_matches_the_cpu_reference(tmp_path, precision, rel):
    """Decode threads hand uint8 tensors (pinned), the device preprocesses a batch, copies come back
    asynchronously, encoder time is read from CUDA events."""
    res = _shard(tmp_path, n=6)
    spec = TeacherSpec(random_init_seed=0, resolution=RES, device="cuda", precision=precision)
    rep = run_features(FeatureRequest("bulk", spec, root=res.root, batch_size=4, decode_threads=2), progress=False)
    assert rep.counts["updated"] == 6 and rep.exit_code == 0, rep.summary()
    assert rep.timings["batches"] == 2 and rep.timings["encoder_s"] > 0
    model = _reference_model(0)
    for p in res.npz:
        p4, p5 = reference(model, _image_of(p))
        got = store.read_arrays(p)
        assert got["P4_S16"].dtype == np.float32 and got["feature_flag"] == 1
        assert _close(got["P4_S16"], p4, rel) and _close(got["P5_S32"], p5, rel), p
        np.testing.assert_array_equal(got["IMAGE_EMB_S16"], got["P4_S16"])


def test_cli_on_cuda_leases_the_gpu_it_uses(tmp_path):
    res = _shard(tmp_path, n=3)
    p = run_cli("features", "--root", res.root, "--random-init", 0, "--resolution", RES, "--device", "cuda", check_rc=0)
    assert "updated 3" in p.stdout
    assert glob.glob(os.path.join(os.environ[devices.LEASE_DIR_ENV], "gpu-*.lease"))  # left for the next taker
    try:
        assert devices.resolve("cuda", wait_s=5, lease_dir=os.environ[devices.LEASE_DIR_ENV]).startswith("cuda:")  # the CLI's lease ended with its process
    finally:
        devices.release_all()

"""Fixtures every test may use; shared helpers are plain functions in ``tests/support``."""

import pytest

from npzfix_core import synth
from tests.support import SMALL_SIZES, SMALL_SPEC


@pytest.fixture(scope="session")
def teacher():
    """The small teacher, built once per session (test_features overrides it with its own)."""
    from npzfix_core.teacher import build

    return build(SMALL_SPEC)


@pytest.fixture(autouse=True)
def _state_dir(tmp_path, monkeypatch):
    """Files that killed a worker are remembered per test, not in the real ~/.cache (for the CLI and Dagster,
    which read the environment; core calls take ``Settings``)."""
    monkeypatch.setenv("NPZFIX_STATE_DIR", str(tmp_path / "npzfix_state"))


@pytest.fixture
def instance(tmp_path):
    """An ephemeral Dagster instance in the test's temp dir."""
    from dagster import DagsterInstance

    with DagsterInstance.ephemeral(tempdir=str(tmp_path / "home")) as inst:
        yield inst


@pytest.fixture
def dataset(tmp_path):
    """A small SA-1B-like shard in every NPZ state (corrupt and missing-JSON included)."""
    return synth.generate(tmp_path / "shard", synth.SynthSpec(n=16, seed=7, sizes=SMALL_SIZES, masks=20, feature_hw=8))

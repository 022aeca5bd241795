"""Shared data generators for the tests: real files on disk, made by the shipped synth module."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from npzfix_core import synth

BIN = os.path.dirname(sys.executable)
NPZFIX = os.path.join(BIN, "npzfix")

SMALL_SIZES = ((120, 180), (1, 1), (37, 300), (256, 256), (300, 257), (64, 40))


@pytest.fixture(autouse=True)
def _state_dir(tmp_path, monkeypatch):
    """Files that killed a worker are remembered per test, not in the real ~/.cache."""
    monkeypatch.setenv("NPZFIX_STATE_DIR", str(tmp_path / "npzfix_state"))


@pytest.fixture
def dataset(tmp_path):
    """A small SA-1B-like shard in every NPZ state (corrupt and missing-JSON included)."""
    return synth.generate(tmp_path / "shard", synth.SynthSpec(n=16, seed=7, sizes=SMALL_SIZES, masks=20, feature_hw=8))


def sha(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def raw_members(path) -> dict[str, bytes]:
    """Member name -> stored (possibly compressed) bytes, to prove members were carried over untouched."""
    out = {}
    with zipfile.ZipFile(path) as zf, open(path, "rb") as f:
        for info in zf.infolist():
            f.seek(info.header_offset + 26)
            n, e = np.frombuffer(f.read(4), "<u2")
            f.seek(info.header_offset + 30 + int(n) + int(e))
            out[info.filename] = f.read(info.compress_size)
    return out


def run_cli(*args, check_rc=None, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run([NPZFIX, *map(str, args)], capture_output=True, text=True, **kw)
    if check_rc is not None:
        assert p.returncode == check_rc, p.stdout + p.stderr
    return p


def temp_files(directory) -> list[str]:
    return [n for n in os.listdir(directory) if ".npzfix-tmp-" in n]

"""``npzfix check`` and ``npzfix_core.checks``: a check finds what is wrong by value and names the remedy,
and never passes a file it could not verify (features) or recompute exactly (edges)."""

import os

import numpy as np
import pytest
from tests.support import SMALL_SPEC, SMALL_TEACHER_FLAGS, image_of, run_cli, set_features_as_written

from npzfix_core import store, synth, checks
from npzfix_core.provenance import EDGE_KEYS, EdgeProvenance
from npzfix_core.teacher import LazyTeacher
from tests.core.test_verify import _fixed


def test_check_command_finds_a_tampered_edge_map(tmp_path):
    res = synth.generate(
        tmp_path / "s", synth.SynthSpec(n=3, seed=9, sizes=((90, 120),), masks=6, states=("fresh",), feature_hw=4)
    )
    ext = os.path.dirname(res.npz[0])
    run_cli("check", "edges", "--npz-dir", ext, check_rc=1)  # nothing repaired yet: flags missing
    run_cli("edges", "--npz-dir", ext, check_rc=0)
    p = run_cli("check", "edges", "--npz-dir", ext, check_rc=0)
    assert "3 file(s) checked, 0 problem(s)" in p.stdout
    edge = store.read_arrays(res.npz[1], ["edge_32x32"])["edge_32x32"]
    edge[0, 0] ^= 1
    store.update(res.npz[1], {"edge_32x32": edge})
    p = run_cli("check", "edges", "--npz-dir", ext, check_rc=1)
    assert "edge maps changed since npzfix wrote them" in p.stdout  # its seal says so before any recompute
    store.update(res.npz[1], {}, remove=set(EDGE_KEYS), seal=EdgeProvenance(3).arrays)  # a record that lies
    p = run_cli("check", "edges", "--npz-dir", ext, check_rc=1)
    assert "edge_32x32 differs from Method B" in p.stdout
    assert run_cli("check", "edges", "--npz-dir", ext, "--kernel-size", "5").returncode == 1


def test_float16_caches_and_other_layouts_are_compared_by_value(tmp_path, teacher):
    res = _fixed(tmp_path, teacher, n=2)
    a = store.read_arrays(res.npz[0])
    half = a["P4_S16"][0].astype(np.float16)  # as --store-dtype float16 writes them, into another layout
    set_features_as_written(res.npz[0], {"P4_S16": half, "IMAGE_EMB_S16": half})
    got = checks.check_features(res.npz, LazyTeacher(teacher))
    assert got.passed and got.verification.verified == 2, got.problems
    assert got.verification.min_cosine["P4_S16"] > 0.99999


def test_bad_samples_are_named_problems_and_the_teacher_is_built_only_when_needed(tmp_path, teacher):
    res = _fixed(tmp_path, teacher, n=4)
    bad_zip, no_image, wrong_shape, good = res.npz
    open(bad_zip, "wb").write(b"not a zip")
    os.remove(image_of(no_image))
    a = store.read_arrays(wrong_shape, ["P4_S16"])["P4_S16"]
    store.update(wrong_shape, {"P4_S16": a[:, :128], "IMAGE_EMB_S16": a[:, :128]})
    never = LazyTeacher(SMALL_SPEC, factory=lambda: pytest.fail("no file needed the teacher"))
    got = checks.check_features([bad_zip, no_image, wrong_shape], never)
    by = {p["path"]: p["problem"] for p in got.problems}
    assert "not a readable NPZ" in by[bad_zip] or "unreadable" in by[bad_zip]
    assert by[no_image].startswith("not verifiable: no image found") and got.unverifiable == 1
    assert "not (.,256,H,W)" in by[wrong_shape] or "holds" in by[wrong_shape]
    assert not got.passed
    got = checks.check_features([good], LazyTeacher(teacher))
    assert got.passed and got.verification.verified == 1
    p = run_cli("check", "features", "--npz-dir", os.path.dirname(good), "--device", "cpu", check_rc=2)
    assert "--weights or --random-init" in p.stderr
    p = run_cli("check", "features", "--npz-dir", os.path.dirname(good), *SMALL_TEACHER_FLAGS, "--structure-only")
    assert p.returncode == 1 and "values are NOT verified" in p.stderr and "verified by value" not in p.stdout

"""Features verified by value: the real sam2 code path (seeded random Hiera-tiny, small images) recomputes
sampled files; five kinds of wrong features are caught, the teacher's own files pass (fp32, bf16, any batch)."""

import os

import numpy as np
import pytest
from tests.support import SMALL_RES, SMALL_SPEC, SMALL_TEACHER_FLAGS, image_of, plant_wrong_features, run_cli

from npzfix_core import synth, checks, verify
from npzfix_core.feature_repair import FeatureRequest, run_features
from npzfix_core.teacher import LazyTeacher, TeacherSpec


def _shard(tmp_path, n=7, states=("fresh",), seed=0, name="shard"):
    return synth.generate(
        tmp_path / name,
        synth.SynthSpec(
            n=n, seed=seed, sizes=((120, 180), (200, 90), (64, 64)), masks=3, states=states, feature_hw=SMALL_RES // 16
        ),
    )


def _fixed(tmp_path, teacher, **kw):
    res = _shard(tmp_path, **kw)
    rep = run_features(FeatureRequest("bulk", SMALL_SPEC, root=res.root), teacher=teacher, progress=False)
    assert rep.counts["updated"] == len(res.npz)
    return res


def test_compare_and_structure_rules():
    a = np.arange(1, 13, dtype=np.float32).reshape(1, 3, 4)
    m = verify.compare("P4_S16", a, a.reshape(-1))
    assert m.cosine == pytest.approx(1.0) and m.max_abs_error == 0 and m.rel_error == 0
    m = verify.compare("P4_S16", -a, a)
    assert m.cosine == pytest.approx(-1.0) and m.rel_error == pytest.approx(2.0)
    with pytest.raises(ValueError):
        verify.compare("P4_S16", a, a[..., :2])
    tol = verify.Tolerance()
    assert tol.accepts(verify.KeyMatch("k", 0.9995, 1.0, 0.05)) and not tol.accepts(verify.KeyMatch("k", 0.998, 0, 0))
    assert not tol.accepts(verify.KeyMatch("k", 0.99999, 1.0, 0.2))  # one channel of garbage: cosine hides it
    good = {"P4_S16": np.ones((1, 256, 8, 8), np.float32), "P5_S32": np.ones((1, 256, 4, 4), np.float32)}
    good["P4_S16"][0, 0, 0, 0] = 2
    good["P5_S32"][0, 0, 0, 0] = 2
    assert verify.structure_problems(good, SMALL_RES) == []
    assert "another resolution" in verify.structure_problems(good, 2 * SMALL_RES)[0]
    nan = {**good, "P5_S32": np.full((1, 256, 4, 4), np.nan, np.float32)}
    assert verify.structure_problems(nan, SMALL_RES) == ["P5_S32 holds NaN or Inf"]
    const = {**good, "P4_S16": np.zeros((1, 256, 8, 8), np.float32)}
    assert verify.structure_problems(const, SMALL_RES) == ["P4_S16 is constant (0)"]
    emb = {**good, "IMAGE_EMB_S16": good["P4_S16"] * 2}
    assert verify.structure_problems(emb, SMALL_RES) == ["IMAGE_EMB_S16 disagrees with P4_S16"]
    assert verify.structure_problems({"P4_S16": good["P4_S16"]}) == ["missing P5_S32"]
    assert "want float" in verify.structure_problems({k: v.astype(np.int32) for k, v in good.items()})[0]


def test_the_five_kinds_of_wrong_features_are_caught_by_the_cli(tmp_path, teacher):
    res = _fixed(tmp_path, teacher)
    planted = plant_wrong_features(res.npz[:5] + [res.npz[-1]], SMALL_RES)
    ext = os.path.dirname(res.npz[0])
    p = run_cli("check", "features", "--npz-dir", ext, *SMALL_TEACHER_FLAGS, "--sample", 50, check_rc=1)
    lines = {ln.split(": ", 1)[0].strip(): ln for ln in p.stdout.splitlines() if ln.startswith("  ")}
    assert set(lines) == set(planted), p.stdout
    for npz, kind in planted.items():
        line = lines[npz]
        if kind == "resolution":
            assert "written at another resolution" in line, line
        else:
            assert "P4_S16 cosine" in line and "differ from the teacher's" in line, line
            cos = float(line.split("P4_S16 cosine ")[1].split(",")[0])
            assert cos < 0.9, (kind, cos)  # measured: <= 0.80 for every kind; the tolerance is 0.999
        assert "npzfix features --force" in line  # they claim to be this teacher's: the remedy redoes them
    assert "7 file(s) checked" in p.stdout
    assert "verified by value: 6 recomputed, 2 matched" in p.stdout  # the other-resolution file is refused first


def test_the_teachers_own_files_pass_in_fp32_and_bf16_across_batch_sizes(tmp_path, teacher):
    res = _fixed(tmp_path, teacher)
    ext = os.path.dirname(res.npz[0])
    p = run_cli("check", "features", "--npz-dir", ext, *SMALL_TEACHER_FLAGS, check_rc=0)
    assert "7 recomputed, 7 matched; min cosine P4_S16 1.000000" in p.stdout
    bf16 = TeacherSpec(random_init_seed=0, resolution=SMALL_RES, device="cpu", precision="bf16")
    rep = run_features(FeatureRequest("bulk", bf16, root=res.root, batch_size=3), progress=False)
    assert rep.counts["updated"] == 7  # another teacher (precision): redone
    res_bf16 = checks.check_features(res.npz, LazyTeacher(bf16))  # the check encodes in batches of 8
    assert res_bf16.passed and res_bf16.verification.verified == 7, res_bf16.problems
    assert 0.999 < res_bf16.verification.min_cosine["P4_S16"] <= 1.0
    # bf16 files against the fp32 teacher, by value only (provenance aside): within the tolerance, not equal
    verdicts = verify.verify([(p, image_of(p)) for p in res.npz], LazyTeacher(teacher))
    assert all(v.status == verify.MATCH for v in verdicts), verdicts
    cos = [m.cosine for v in verdicts for m in v.matches]
    assert 0.999 < min(cos) < 0.99999  # measured 1 - cos ~ 5e-5


def test_a_lazy_teacher_refuses_a_model_that_is_not_the_one_asked_for(teacher):
    from npzfix_core.teacher import TeacherError

    other = TeacherSpec(random_init_seed=1, resolution=SMALL_RES, device="cpu")
    with pytest.raises(TeacherError, match="not the one requested"):
        LazyTeacher(other, factory=lambda: teacher).get()

"""The table of owned outputs (``npzfix_core.outputs``): adding a row is all it takes to compute, write, seal,
check and verify a new feature member. Shown with a throwaway key, P3 at stride 8 (SAM2's FPN level 1)."""

import json

import numpy as np
import pytest
from tests.support import SMALL_RES, SMALL_SPEC, reference_model_of, set_features_as_written

from npzfix_core import outputs, store, synth, checks
from npzfix_core.feature_repair import FeatureRequest, run_features
from npzfix_core.teacher import LazyTeacher

P3 = outputs.FeatureKey("THROWAWAY_P3_S8", level=1, stride=8)


def _shard(tmp_path):
    spec = synth.SynthSpec(n=3, seed=0, sizes=((120, 180), (64, 64), (90, 200)), masks=3, feature_hw=SMALL_RES // 16)
    return synth.generate(tmp_path / "shard", spec)


def test_the_table_says_what_a_cache_holds():
    assert outputs.computed_names() == ("P4_S16", "P5_S32")
    assert outputs.feature_names() == ("P4_S16", "P5_S32", "IMAGE_EMB_S16")
    emb = outputs.FEATURES[2]
    assert emb.source == "P4_S16" and not emb.always and emb.shape(1024) == (1, 256, 64, 64)
    assert outputs.FEATURES[1].shape(1024) == (1, 256, 32, 32)
    assert outputs.EDGE_MAPS == ("edge_256x256", "edge_64x64", "edge_32x32")


def test_adding_an_output_is_one_row(tmp_path, monkeypatch, teacher):
    res = _shard(tmp_path)
    req = FeatureRequest("bulk", SMALL_SPEC, root=res.root, decode_threads=1)
    assert run_features(req, teacher=teacher, progress=False).counts["updated"] == 3  # with today's table

    monkeypatch.setattr(outputs, "FEATURES", (*outputs.FEATURES, P3))
    # files written before the row existed are not done any more: their record does not seal the new key
    again = run_features(req, teacher=teacher, progress=False)
    assert again.counts["updated"] == 3 and again.exit_code == 0

    import torch

    model = reference_model_of(0)
    for npz in res.npz:
        got = store.read_arrays(npz)
        assert got[P3.name].shape == (1, 256, SMALL_RES // 8, SMALL_RES // 8) and got[P3.name].dtype == np.float32
        from npzfix_core.images import load_rgb, preprocess

        x = preprocess([load_rgb(checks.discovery.find_image(npz))], SMALL_RES, torch.device("cpu"))
        with torch.no_grad():
            want = model.image_encoder(x)["backbone_fpn"][1].numpy()
        assert np.abs(got[P3.name] - want).max() <= 1e-5  # the teacher's level 1, no other
        sealed = json.loads(str(got["feature_provenance"]))["crc32"]
        assert P3.name in sealed  # provenance vouches for it like for P4/P5

    assert run_features(req, teacher=teacher, progress=False).counts["skipped_done"] == 3
    check = checks.check_features(res.npz, LazyTeacher(teacher), needs_flag=True)
    assert check.passed and check.verification.verified == 3, check.problems
    assert set(check.verification.min_cosine) == {"P4_S16", "P5_S32", "IMAGE_EMB_S16", P3.name}

    # wrong values in the new member, under a record resealed over them: only the value check can tell, and does
    noise = np.random.default_rng(0).standard_normal((1, 256, SMALL_RES // 8, SMALL_RES // 8)).astype(np.float32)
    set_features_as_written(res.npz[1], {P3.name: noise})
    wrong = checks.check_features(res.npz[1:2], LazyTeacher(teacher), needs_flag=True)
    assert not wrong.passed and f"{P3.name} cosine" in wrong.problems[0]["problem"], wrong.problems

    store.update(res.npz[0], {P3.name: np.zeros((1, 256, 4, 4), np.float32)})  # wrong size: structure catches it
    bad = checks.check_features(res.npz[:1], None, needs_flag=True)
    assert any(P3.name in p["problem"] for p in bad.problems), bad.problems


def test_a_missing_row_is_named(monkeypatch):
    from npzfix_core.verify import structure_problems

    monkeypatch.setattr(outputs, "FEATURES", (*outputs.FEATURES, P3))
    rng = np.random.default_rng(0)
    arrays = {k.name: rng.standard_normal(k.shape(128)).astype(np.float32) for k in outputs.computed() if k is not P3}
    assert structure_problems(arrays, 128) == [f"missing {P3.name}"]


@pytest.fixture
def teacher():
    from npzfix_core.teacher import build

    return build(SMALL_SPEC)

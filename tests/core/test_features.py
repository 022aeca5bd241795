"""SAM2 features: the real sam2 code path (seeded random Hiera-tiny), compared with a per-image reference."""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from tests.support import NPZFIX, run_cli, sha, temp_files
from tests.support import reference_features as reference
from tests.support import reference_model_of as _reference_model
from PIL import Image

from npzfix_core import store, synth
from npzfix_core.feature_repair import FeatureRequest, run_features
from npzfix_core.teacher import TeacherSpec, build, config_for_checkpoint

RES = 256
SPEC = TeacherSpec(random_init_seed=0, resolution=RES, device="cpu")
TOL = 1e-5


@pytest.fixture(scope="module")
def teacher():
    return build(SPEC)


@pytest.fixture(scope="module")
def reference_model():
    return _reference_model(0)


def _shard(tmp_path, n=5, states=("fresh",), seed=0, sizes=((120, 180), (64, 64), (200, 90)), name="shard"):
    return synth.generate(
        tmp_path / name, synth.SynthSpec(n=n, seed=seed, sizes=sizes, masks=3, states=states, feature_hw=RES // 16)
    )


def _image_of(npz):
    stem = os.path.basename(npz).split("_features")[0].replace("_sam2", "")
    return os.path.join(os.path.dirname(os.path.dirname(npz)), stem + ".jpg")


def test_bulk_matches_reference_and_sets_flag(tmp_path, teacher, reference_model):
    res = _shard(tmp_path, n=5)
    before = {p: store.read_arrays(p, ["P3_S8_f16", "num_masks", "edge_64x64"]) for p in res.npz}
    rep = run_features(
        FeatureRequest("bulk", SPEC, root=res.root, batch_size=2, decode_threads=2), teacher=teacher, progress=False
    )
    assert rep.counts["updated"] == 5 and rep.exit_code == 0
    for p in res.npz:
        got = store.read_arrays(p)
        p4, p5 = reference(reference_model, _image_of(p))
        assert got["P4_S16"].shape == (1, 256, 16, 16) and got["P5_S32"].shape == (1, 256, 8, 8)
        assert np.abs(got["P4_S16"] - p4).max() <= TOL and np.abs(got["P5_S32"] - p5).max() <= TOL
        np.testing.assert_array_equal(got["IMAGE_EMB_S16"], got["P4_S16"])  # the file had the key: kept in step
        assert got["feature_flag"] == 1 and got["feature_flag"].dtype == np.uint8
        prov = json.loads(str(got["feature_provenance"]))
        assert prov["weights"] == "random-init:0" and prov["scalp"] == 0 and prov["resolution"] == RES
        for k, v in before[p].items():
            np.testing.assert_array_equal(got[k], v)
    assert any("randomly initialised" in w for w in rep.warnings)


def test_bulk_dedup_skip_force_and_legacy(tmp_path, teacher):
    res = _shard(tmp_path, n=3, states=("fresh", "feature_flagged", "fresh"))
    a = res.npz[0]
    twin = a.replace("_features.npz", "_sam2_features.npz")
    shutil.copy(a, twin)
    twin_digest = sha(twin)
    req = FeatureRequest("bulk", SPEC, root=res.root)
    rep = run_features(req, teacher=teacher, progress=False)
    assert rep.counts["updated"] == 2 and rep.counts["skipped_legacy"] == 1 and rep.seen == 3
    assert sha(twin) == twin_digest  # _features won
    rep = run_features(req, teacher=teacher, progress=False)
    assert rep.counts["skipped_done"] == 2 and rep.counts["updated"] == 0
    rep = run_features(
        FeatureRequest("bulk", SPEC, root=res.root, force=True, max_files=2), teacher=teacher, progress=False
    )
    assert rep.counts["updated"] == 2
    rep = run_features(
        FeatureRequest("bulk", SPEC, root=res.root, max_files=1, force=True), teacher=teacher, progress=False
    )
    assert rep.counts["updated"] == 1 and rep.stopped_early


def test_changed_teacher_is_redone_not_skipped(tmp_path, teacher):
    res = _shard(tmp_path, n=2)
    run_features(FeatureRequest("bulk", SPEC, root=res.root), teacher=teacher, progress=False)
    other = TeacherSpec(random_init_seed=0, resolution=RES, device="cpu", precision="bf16")
    rep = run_features(FeatureRequest("bulk", other, root=res.root, dry_run=True), progress=False)
    assert rep.counts["would_update"] == 2


def test_samples_mode_lookup_order_and_no_flag(tmp_path, teacher, reference_model):
    res = _shard(tmp_path, n=4)
    images = [_image_of(p) for p in res.npz]
    # image 0: NPZ beside the image; image 1: only a _sam2_features beside it; 2, 3: NPZ in a search dir
    shutil.copy(res.npz[0], os.path.join(res.root, os.path.basename(res.npz[0])))
    shutil.copy(res.npz[1], os.path.join(res.root, os.path.basename(res.npz[1]).replace("_features", "_sam2_features")))
    store_dir = tmp_path / "scattered" / "deep"
    store_dir.mkdir(parents=True)
    for p in res.npz[2:]:
        shutil.move(p, store_dir / os.path.basename(p))
    lst = tmp_path / "samples.txt"
    lst.write_text("\n".join(images + [str(tmp_path / "nope.jpg")]) + "\n")
    untouched = {p: sha(p) for p in res.npz[:2]}
    rep = run_features(
        FeatureRequest("samples", SPEC, samples=str(lst), npz_dirs=(str(tmp_path / "scattered"),), max_files=10),
        teacher=teacher,
        progress=False,
    )
    assert rep.counts["updated"] == 4 and rep.counts["missing_source"] == 1
    assert all(sha(p) == d for p, d in untouched.items())  # same-dir copies were used instead
    targets = [
        os.path.join(res.root, os.path.basename(res.npz[0])),
        os.path.join(res.root, os.path.basename(res.npz[1]).replace("_features", "_sam2_features")),
    ]
    targets += [str(store_dir / os.path.basename(p)) for p in res.npz[2:]]
    for img, npz in zip(images, targets):
        got = store.read_arrays(npz)
        p4, _ = reference(reference_model, img)
        assert np.abs(got["P4_S16"] - p4).max() <= TOL
        np.testing.assert_array_equal(got["IMAGE_EMB_S16"], got["P4_S16"])
        assert "feature_flag" not in got
    rep = run_features(
        FeatureRequest("samples", SPEC, samples=str(lst), npz_dirs=(str(tmp_path / "scattered"),), max_files=1),
        teacher=teacher,
        progress=False,
    )
    assert rep.counts["updated"] == 1


def test_train_test_mode_image_in_parent_any_extension(tmp_path, teacher, reference_model):
    a = _shard(tmp_path, n=2, name="train_1200", seed=1)
    b = _shard(tmp_path, n=2, name="test", seed=2)
    png = _image_of(b.npz[0]).replace(".jpg", ".PNG")
    Image.open(_image_of(b.npz[0])).save(png)
    os.remove(_image_of(b.npz[0]))
    dirs = (os.path.join(a.root, "extracted"), os.path.join(b.root, "extracted"))
    rep = run_features(FeatureRequest("train_test", SPEC, extracted_dirs=dirs), teacher=teacher, progress=False)
    assert rep.counts["updated"] == 4
    got = store.read_arrays(b.npz[0])
    assert np.abs(got["P4_S16"] - reference(reference_model, png)[0]).max() <= TOL
    assert got["feature_flag"] == 1


def test_store_dtype_keep_and_shape_mismatch(tmp_path, teacher, reference_model):
    res = _shard(tmp_path, n=2)
    arrays = store.read_arrays(res.npz[0])
    arrays["P4_S16"] = arrays["P4_S16"][0].astype(np.float16)  # (256, 16, 16) float16
    del arrays["IMAGE_EMB_S16"], arrays["P5_S32"]
    np.savez(res.npz[0], **arrays)
    arrays = store.read_arrays(res.npz[1])
    arrays["P4_S16"] = np.zeros((1, 256, 64, 64), np.float32)  # cached at 1024: wrong resolution for this run
    np.savez(res.npz[1], **arrays)
    digest = sha(res.npz[1])
    rep = run_features(FeatureRequest("bulk", SPEC, root=res.root), teacher=teacher, progress=False)
    assert rep.counts["updated"] == 1 and rep.counts["failed"] == 1
    assert "wrong --resolution" in rep.failures[0]["reason"] and sha(res.npz[1]) == digest
    info = store.inspect(res.npz[0])
    assert info["P4_S16"].shape == (256, 16, 16) and info["P4_S16"].dtype == np.float16
    assert info["P5_S32"].shape == (1, 256, 8, 8) and info["P5_S32"].dtype == np.float32
    assert "IMAGE_EMB_S16" not in info
    p4, _ = reference(reference_model, _image_of(res.npz[0]))
    np.testing.assert_array_equal(store.read_arrays(res.npz[0], ["P4_S16"])["P4_S16"], p4[0].astype(np.float16))


def test_awkward_images_follow_the_documented_rule(tmp_path, teacher, reference_model):
    res = _shard(tmp_path, n=7, sizes=((60, 80),))
    imgs = [_image_of(p) for p in res.npz]
    rgb = np.array(Image.open(imgs[0]))
    os.remove(imgs[0])
    Image.fromarray(rgb[:, :, 0]).save(imgs[0].replace(".jpg", ".png"))  # grayscale
    os.remove(imgs[1])
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])).save(imgs[1].replace(".jpg", ".png"))  # RGBA
    os.remove(imgs[2])
    Image.fromarray((rgb[:, :, 1].astype(np.uint16) * 257)).save(imgs[2].replace(".jpg", ".png"))  # 16-bit
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90" orientation tag
    Image.fromarray(rgb).save(imgs[3], exif=exif.tobytes(), quality=95)
    data = open(imgs[4], "rb").read()
    open(imgs[4], "wb").write(data[: len(data) // 3])  # truncated JPEG
    os.remove(imgs[5])  # missing image
    open(imgs[6], "wb").write(b"not an image")
    digests = {p: sha(p) for p in res.npz[4:]}
    rep = run_features(FeatureRequest("bulk", SPEC, root=res.root), teacher=teacher, progress=False)
    assert rep.counts["updated"] == 4 and rep.counts["failed"] == 2 and rep.counts["missing_source"] == 1
    reasons = " | ".join(f["reason"] for f in rep.failures)
    assert "truncated image" in reasons and "cannot decode" in reasons and "no image found" in reasons
    assert all(sha(p) == d for p, d in digests.items())
    for i in range(4):
        got = store.read_arrays(res.npz[i], ["P4_S16"])["P4_S16"]
        src = imgs[i] if i == 3 else imgs[i].replace(".jpg", ".png")
        assert np.abs(got - reference(reference_model, src)[0]).max() <= TOL, i  # OpenCV's conversion, as cv2.imread
    # EXIF orientation 6 is applied, as the originals' cv2.imread does: features of the rotated image
    upright = str(tmp_path / "upright.png")
    Image.fromarray(np.rot90(rgb, -1)).save(upright)
    stored = str(tmp_path / "stored.png")
    Image.fromarray(rgb).save(stored)
    got = store.read_arrays(res.npz[3], ["P4_S16"])["P4_S16"]
    assert np.abs(got - reference(reference_model, upright)[0]).max() <= 0.05  # the JPEG's own loss apart
    assert np.abs(got - reference(reference_model, stored)[0]).max() > 0.1


def test_checkpoint_loads_strictly_and_names_its_config(tmp_path):
    import torch

    model = _reference_model(5)
    ckpt = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": model.state_dict()}, ckpt)
    assert config_for_checkpoint(str(ckpt)) == "configs/sam2.1/sam2.1_hiera_t.yaml"
    assert config_for_checkpoint("/w/sam2_hiera_base_plus.pt") == "configs/sam2/sam2_hiera_b+.yaml"
    res = _shard(tmp_path, n=2)
    p = run_cli(
        "features",
        "--root",
        res.root,
        "--weights",
        ckpt,
        "--resolution",
        RES,
        "--device",
        "cpu",
        "--batch-size",
        2,
        "--report",
        tmp_path / "r.json",
        check_rc=0,
    )
    assert "updated 2" in p.stdout
    got = store.read_arrays(res.npz[0])
    p4, p5 = reference(model, _image_of(res.npz[0]))
    assert np.abs(got["P4_S16"] - p4).max() <= TOL and np.abs(got["P5_S32"] - p5).max() <= TOL
    assert json.loads(str(got["feature_provenance"]))["weights"].startswith("sha256:")
    p = run_cli("features", "--root", res.root, "--weights", ckpt, "--resolution", RES, "--device", "cpu", check_rc=0)
    assert "skipped (already done) 2" in p.stdout
    bad = tmp_path / "sam2.1_hiera_small.pt"
    shutil.copy(ckpt, bad)  # tiny weights under a small name: strict load must refuse
    p = run_cli("features", "--root", res.root, "--weights", bad, "--force", "--resolution", RES, "--device", "cpu")
    assert p.returncode == 2 and "does not match" in p.stderr and "Traceback" not in p.stderr


def test_usage_errors(tmp_path):
    res = _shard(tmp_path, n=1)
    p = run_cli("features", "--root", res.root, "--device", "cpu", check_rc=2)
    assert "--weights" in p.stderr and "--random-init" in p.stderr
    p = run_cli("features", "--root", res.root, "--weights", tmp_path / "model.pt", check_rc=2)
    run_cli("features", "--root", res.root, "--samples", "x", "--random-init", 0, check_rc=2)
    p = run_cli("features", "--root", res.root, "--random-init", 0, "--device", "cuda:3", "--gpus", "1,2", check_rc=2)
    assert "GPU" in p.stderr


def test_concurrent_edges_and_features_keep_both(tmp_path):
    res = _shard(tmp_path, n=12, sizes=((300, 400),))
    ext = os.path.dirname(res.npz[0])
    feat = subprocess.Popen(
        [
            NPZFIX,
            "features",
            "--root",
            res.root,
            "--random-init",
            "0",
            "--resolution",
            str(RES),
            "--device",
            "cpu",
            "--batch-size",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for _ in range(3):
        run_cli("edges", "--npz-dir", ext, "--kernel-size", "5", check_rc=0)
    out, err = feat.communicate(timeout=300)
    assert feat.returncode == 0, out + err
    for p in res.npz:
        got = store.read_arrays(p)
        assert got["feature_flag"] == 1 and got["edge_flag"] == 1
        assert json.loads(str(got["edge_provenance"]))["kernel_size"] == 5
    assert temp_files(ext) == []


@pytest.mark.slow
def test_real_1024_resolution_end_to_end(tmp_path):
    res = synth.generate(
        tmp_path / "s", synth.SynthSpec(n=1, seed=3, sizes=((1500, 2250),), masks=5, states=("fresh",), feature_hw=64)
    )
    spec = TeacherSpec(random_init_seed=0, device="cpu")
    rep = run_features(FeatureRequest("bulk", spec, root=res.root), progress=False)
    assert rep.counts["updated"] == 1
    got = store.read_arrays(res.npz[0])
    assert got["P4_S16"].shape == (1, 256, 64, 64) and got["P5_S32"].shape == (1, 256, 32, 32)
    p4, p5 = reference(_reference_model(0), _image_of(res.npz[0]), res=1024)
    assert np.abs(got["P4_S16"] - p4).max() <= TOL and np.abs(got["P5_S32"] - p5).max() <= TOL


def test_gpu_data_path_and_bf16_exercised_on_the_cpu(tmp_path, teacher, reference_model):
    """The path a GPU run takes (uint8 tensors from the decode threads, batched preprocessing on the device,
    autocast) run here on the CPU: same numbers as the reference in fp32, close in bf16, stored as float32."""
    res = _shard(tmp_path, n=3)
    rep = run_features(
        FeatureRequest("bulk", SPEC, root=res.root, batch_size=3, preprocess_on="device"),
        teacher=teacher,
        progress=False,
    )
    assert rep.counts["updated"] == 3
    refs = [reference(reference_model, _image_of(p)) for p in res.npz]
    for p, (p4, p5) in zip(res.npz, refs):
        got = store.read_arrays(p)
        assert np.abs(got["P4_S16"] - p4).max() <= TOL and np.abs(got["P5_S32"] - p5).max() <= TOL
    bf16 = TeacherSpec(random_init_seed=0, resolution=RES, device="cpu", precision="bf16")
    rep = run_features(
        FeatureRequest("bulk", bf16, root=res.root, batch_size=2, preprocess_on="device"), progress=False
    )
    assert rep.counts["updated"] == 3
    for p, (p4, p5) in zip(res.npz, refs):
        got = store.read_arrays(p)
        assert got["P4_S16"].dtype == np.float32 and got["P5_S32"].dtype == np.float32
        rel = np.abs(got["P4_S16"] - p4).max() / np.abs(p4).max()
        assert 0 < rel < 0.1  # bf16 really ran, and stayed close
        assert json.loads(str(got["feature_provenance"]))["precision"] == "bf16"


def test_stale_temp_files_are_swept_where_the_run_works(tmp_path, teacher):
    res = _shard(tmp_path, n=2)
    ext = os.path.dirname(res.npz[0])
    stale = os.path.join(ext, "." + os.path.basename(res.npz[0]) + ".npzfix-tmp-killed")
    open(stale, "wb").write(b"half a zip")
    run_features(FeatureRequest("bulk", SPEC, root=res.root), teacher=teacher, progress=False)
    assert temp_files(ext) == []


def test_unloadable_checkpoints_are_clear_usage_errors(tmp_path):
    import torch

    res = _shard(tmp_path, n=1)
    cases = {
        "truncated": lambda p: open(p, "wb").write(b"PK\x03\x04 not really a checkpoint"),
        "no model key": lambda p: torch.save({"state": {}}, p),
        "config typo": None,
    }
    for what, make in cases.items():
        ckpt = tmp_path / "sam2.1_hiera_tiny.pt"
        if make:
            make(ckpt)
            args = ["--weights", ckpt]
        else:
            args = ["--random-init", 0, "--config", "configs/sam2.1/sam2.1_hiera_q.yaml"]
        p = run_cli("features", "--root", res.root, *args, "--resolution", RES, "--device", "cpu", "--force")
        assert p.returncode == 2 and "Traceback" not in p.stderr, (what, p.stderr[-1500:])
        assert "checkpoint" in p.stderr or "config" in p.stderr

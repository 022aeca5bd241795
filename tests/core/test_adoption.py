"""Legacy caches (flagged by the original tool, no provenance): verified by a sample, then adopted or redone;
and the drift measured when a teacher change redoes files."""

import json
import os
import signal
import subprocess
import time

import numpy as np
from tests.support import (
    NPZFIX,
    SMALL_RES,
    SMALL_SPEC,
    SMALL_TEACHER_FLAGS,
    image_of,
    raw_members,
    run_cli,
    set_features,
    sha,
    temp_files,
)

from npzfix_core import store, synth
from npzfix_core.feature_repair import FeatureRequest, run_features
from npzfix_core.teacher import TeacherSpec

def _legacy_shard(tmp_path, teacher, n=6, name="shard", seed=0):
    """A shard as the original tool left it when it worked: the teacher's features, feature_flag, no provenance."""
    res = synth.generate(
        tmp_path / name,
        synth.SynthSpec(n=n, seed=seed, sizes=((120, 180), (90, 200)), masks=3, states=("fresh",), feature_hw=8),
    )
    run_features(FeatureRequest("bulk", SMALL_SPEC, root=res.root), teacher=teacher, progress=False)
    for p in res.npz:
        store.update(p, remove={"feature_provenance"})
    return res


def _provenance(p):
    return json.loads(str(store.read_flags(p, ["feature_provenance"])["feature_provenance"]))


def _req(res, **kw):
    return FeatureRequest("bulk", SMALL_SPEC, root=res.root, **kw)


def test_a_verified_directory_is_adopted_without_rewriting_its_features(tmp_path, teacher):
    res = _legacy_shard(tmp_path, teacher)
    before = {p: raw_members(p) for p in res.npz}
    rep = run_features(_req(res, legacy="verify", legacy_sample=3), teacher=teacher, progress=False)
    assert rep.counts["adopted"] == 6 and rep.counts["updated"] == 0, rep.failures
    (d,) = rep.legacy
    assert d["decision"] == "adopted" and d["sampled"] == 3 and d["matched"] == 3 and d["legacy_files"] == 6
    for p in res.npz:
        after = raw_members(p)
        for key in ("P4_S16.npy", "P5_S32.npy", "IMAGE_EMB_S16.npy", "feature_flag.npy", "edge_64x64.npy"):
            assert after[key] == before[p][key], key  # byte for byte: stamped, not recomputed
        prov = _provenance(p)
        assert prov["weights"] == "random-init:0" and prov["adopted"]["verified"] == 3
        assert prov["adopted"]["of"] == 6 and prov["adopted"]["tolerance"] == {"min_cosine": 0.999, "max_rel_error": 0.1}
    rep = run_features(_req(res, legacy="verify"), teacher=teacher, progress=False)
    assert rep.counts["skipped_done"] == 6 and rep.legacy == []  # adopted = done for this teacher
    p = run_cli("check", "features", "--npz-dir", os.path.dirname(res.npz[0]), *SMALL_TEACHER_FLAGS, check_rc=0)
    assert "6 recomputed, 6 matched" in p.stdout


def test_one_mismatching_sampled_file_redoes_the_whole_directory(tmp_path, teacher):
    res = _legacy_shard(tmp_path, teacher)
    bad = res.npz[2]
    rng = np.random.default_rng(1)
    set_features(bad, rng.standard_normal((1, 256, 8, 8)), rng.standard_normal((1, 256, 4, 4)), legacy=True)
    ok = _legacy_shard(tmp_path, teacher, n=2, name="ok", seed=3)
    rep = run_features(
        FeatureRequest("bulk", SMALL_SPEC, root=str(tmp_path), legacy="verify", legacy_sample=6), teacher=teacher, progress=False
    )
    decisions = {d["directory"]: d for d in rep.legacy}
    redone = decisions[os.path.dirname(bad)]
    assert redone["decision"] == "redone" and os.path.basename(bad) in redone["why"] and redone["matched"] == 5
    assert decisions[os.path.dirname(ok.npz[0])]["decision"] == "adopted"  # decided per directory
    assert rep.counts["updated"] == 6 and rep.counts["adopted"] == 2
    for p in res.npz:
        assert "adopted" not in _provenance(p)
    p = run_cli("check", "features", "--npz-dir", os.path.dirname(bad), *SMALL_TEACHER_FLAGS, check_rc=0)
    assert "6 recomputed, 6 matched" in p.stdout
    # the noise file was a drift sample (legacy redone): held something unrelated
    assert rep.drift["candidates"] == 6 and rep.drift["sampled"] == 4  # 1st, 2nd, 3rd, 5th
    assert [u["path"] for u in rep.drift["unrelated"]] == [bad]  # redone first, so always in the sample
    assert rep.drift["P4_S16"]["min_cosine"] < 0.5 and rep.drift["P4_S16"]["median_cosine"] > 0.999
    assert rep.drift["from"] == {"the original tool (no provenance)": 4}


def test_adoption_never_stamps_a_file_that_fails_the_structural_check(tmp_path, teacher):
    res = _legacy_shard(tmp_path, teacher, n=4)
    broken = res.npz[1]
    a = store.read_arrays(broken, ["P4_S16", "P5_S32"])
    p5 = a["P5_S32"].copy()
    p5[0, 3] = np.nan
    set_features(broken, a["P4_S16"], p5, legacy=True)
    os.remove(image_of(broken))  # never in the sample (no image to verify it with), so the sample matches
    digest = sha(broken)
    rep = run_features(_req(res, legacy="verify", legacy_sample=3), teacher=teacher, progress=False)
    assert rep.legacy[0]["decision"] == "adopted" and rep.counts["adopted"] == 3
    assert rep.counts["missing_source"] == 1  # examined, refused, to be redone: but its image is gone
    assert sha(broken) == digest and "feature_provenance" not in store.inspect(broken)


def test_legacy_redo_and_skip_and_their_limits(tmp_path, teacher):
    res = _legacy_shard(tmp_path, teacher, n=3)
    run_features(FeatureRequest("bulk", SMALL_SPEC, root=res.root, force=True, max_files=1), teacher=teacher, progress=False)
    done = [p for p in res.npz if "feature_provenance" in store.inspect(p)]
    assert len(done) == 1
    digest = sha(done[0])
    rep = run_features(_req(res), teacher=teacher, progress=False)
    assert rep.counts["skipped_legacy"] == 2 and rep.counts["skipped_done"] == 1  # the original behaviour
    rep = run_features(_req(res, legacy="redo"), teacher=teacher, progress=False)
    assert rep.counts["updated"] == 2 and rep.counts["skipped_done"] == 1 and sha(done[0]) == digest
    p = run_cli("features", "--samples", tmp_path / "x.txt", *SMALL_TEACHER_FLAGS, "--legacy", "verify", check_rc=2)
    assert "--legacy goes with --root" in p.stderr


def test_a_dry_run_verifies_nothing_and_writes_nothing(tmp_path, teacher):
    res = _legacy_shard(tmp_path, teacher, n=2)
    digests = [sha(p) for p in res.npz]
    rep = run_features(_req(res, legacy="verify", dry_run=True), progress=False)
    assert rep.counts["skipped_legacy"] == 2 and rep.legacy[0]["decision"] == "left as they are"
    assert [sha(p) for p in res.npz] == digests


def test_drift_is_measured_on_a_sample_when_the_teacher_changes(tmp_path, teacher):
    res = synth.generate(
        tmp_path / "s", synth.SynthSpec(n=12, seed=4, sizes=((96, 128),), masks=2, states=("fresh",), feature_hw=8)
    )
    run_features(_req(res), teacher=teacher, progress=False)
    read = []
    real = store.read_arrays
    store.read_arrays = lambda p, keys=None: (read.append((p, keys)) or real(p, keys))
    try:
        rep = run_features(
            FeatureRequest("bulk", TeacherSpec(random_init_seed=1, resolution=SMALL_RES, device="cpu"), root=res.root),
            progress=False,
        )
    finally:
        store.read_arrays = real
    assert rep.counts["updated"] == 12
    d = rep.drift
    assert d["candidates"] == 12 and d["sampled"] == 5  # the 1st, 2nd, 3rd, 5th and 9th redone
    assert d["P4_S16"]["min_cosine"] < 0.5 and len(d["unrelated"]) == 5  # another checkpoint: unrelated
    assert list(d["from"]) == ["configs/sam2.1/sam2.1_hiera_t.yaml random-init:0 fp32 @128"]
    old_reads = [p for p, keys in read if keys == ("P4_S16", "P5_S32")]
    assert len(old_reads) == 5  # sample only: the old arrays of the other files were never read
    assert "drift, old vs new features of 5 of 12 files" in rep.summary()
    rep = run_features(
        FeatureRequest("bulk", SMALL_SPEC, root=res.root, drift_sample=2), teacher=teacher, progress=False
    )
    assert rep.drift["sampled"] == 2 and rep.drift["candidates"] == 12


def test_a_killed_adoption_leaves_every_file_old_or_fully_stamped(tmp_path, teacher):
    res = _legacy_shard(tmp_path, teacher, n=10)
    before = {p: raw_members(p) for p in res.npz}
    held = res.npz[7]
    fd = store.open_regular(held)
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_EX)  # the run blocks on this file's lock, mid-adoption
    proc = subprocess.Popen(
        [NPZFIX, "features", "--root", res.root, *map(str, SMALL_TEACHER_FLAGS), "--legacy", "verify", "--writers", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not any("feature_provenance" in store.inspect(p) for p in res.npz):
            time.sleep(0.1)
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    stamped = 0
    for p in res.npz:
        after = raw_members(p)
        for key in ("P4_S16.npy", "P5_S32.npy", "feature_flag.npy"):
            assert after[key] == before[p][key]
        if "feature_provenance.npy" in after:
            stamped += 1
            assert _provenance(p)["adopted"]["of"] == 10
        else:
            assert after == before[p]
    assert 0 < stamped < 10 and "feature_provenance" not in store.inspect(held)
    rep = run_features(_req(res, legacy="verify"), teacher=teacher, progress=False)
    assert rep.counts["adopted"] + rep.counts["skipped_done"] == 10 and rep.counts["adopted"] == 10 - stamped
    assert temp_files(os.path.dirname(held)) == []

"""Caches as vfmkd writes them, repaired with the originals' own command lines in each of the four modes.

Every file holds the extractor's full key set (pickled ``masks`` in most, deflated box-prompt files in some,
``edge_original`` in a few); after each mode, every key npzfix does not own is unchanged (same stored bytes, so
the same compression; pickled members equal once unpickled here, by the test), and the repaired keys equal an
independent reference: Method B written out straight (edges, bit-exact) and SAM2 built straight from sam2 with
the originals' image decoding (features)."""

import os
import zipfile

import numpy as np
import pytest
from tests.support import (
    EDGE_OWNED,
    FEATURE_OWNED,
    SMALL_RES,
    SMALL_TEACHER_FLAGS,
    assert_carried,
    image_of,
    raw_members,
    reference_features,
    reference_model_of,
    run_cli,
    sha,
)

from npzfix_core import store, synth
from npzfix_core.edges import method_b_reference, parse_sa1b

TOL = 1e-5
SIZES = ((120, 180), (37, 300), (96, 64))


@pytest.fixture(scope="module")
def ref_model():
    return reference_model_of(0)


def _real(root, n, seed, states, prefix="sa_"):
    res = synth.generate(
        root,
        synth.SynthSpec(n=n, seed=seed, sizes=SIZES, masks=8, states=states, feature_hw=SMALL_RES // 16, prefix=prefix),
    )
    kinds = {"pickled masks": 0, "deflated": 0, "edge_original": 0}
    for p in res.npz:
        info = store.inspect(p)
        kinds["pickled masks"] += "masks" in info and info["masks"].carried
        kinds["edge_original"] += "edge_original" in info
        with zipfile.ZipFile(p) as zf:
            kinds["deflated"] += zf.infolist()[0].compress_type == zipfile.ZIP_DEFLATED
    return res, kinds


def _features_match(npz, model, image, with_emb: bool) -> float:
    got = store.read_arrays(npz, ["P4_S16", "P5_S32", "IMAGE_EMB_S16"])
    p4, p5 = reference_features(model, image, SMALL_RES)
    err = max(float(np.abs(got["P4_S16"] - p4).max()), float(np.abs(got["P5_S32"] - p5).max()))
    assert err <= TOL, (npz, err)
    assert ("IMAGE_EMB_S16" in got) == with_emb
    if with_emb:
        assert np.array_equal(got["IMAGE_EMB_S16"], got["P4_S16"])
    return err


def test_edges_with_the_original_command_line(tmp_path):
    states = ("fresh", "with_256", "flagged", "stale", "no_edges", "fresh")
    res, kinds = _real(tmp_path / "sa1b", 12, 3, states)
    assert kinds["pickled masks"] >= 9 and kinds["deflated"] >= 3 and kinds["edge_original"] >= 1
    before = {p: raw_members(p) for p in res.npz}
    digests = {p: sha(p) for p in res.npz}
    ext = os.path.join(res.root, "extracted")
    p = run_cli(
        "edges", "--npz-dir", ext, "--json-dir", res.root, "--kernel-size", "3", "--max-files", "0",
        "--log", tmp_path / "logs" / "edges.log", check_rc=0,
    )  # fmt: skip
    flagged = [q for q, s in res.states.items() if s == "flagged"]
    assert f"updated {12 - len(flagged)}" in p.stdout and f"skipped (already done) {len(flagged)}" in p.stdout
    compared = 0
    for q in res.npz:
        if q in flagged:  # the original tool's B_v1 flag: skipped by default, as it did
            assert sha(q) == digests[q]
            continue
        with open(os.path.join(res.root, os.path.basename(q).replace("_features.npz", ".json")), "rb") as f:
            want = method_b_reference(parse_sa1b(__import__("json").loads(f.read())), 3)
        got = store.read_arrays(q, ["edge_64x64", "edge_32x32", "edge_256x256"])
        for side in (64, 32):
            assert np.array_equal(got[f"edge_{side}x{side}"], want[side])
        assert ("edge_256x256" in got) == ("edge_256x256.npy" in before[q])
        if "edge_256x256" in got:
            assert np.array_equal(got["edge_256x256"], want[256])
        compared += assert_carried(q, before[q], EDGE_OWNED)
    assert compared >= 9 * 16
    print(f"edges: {12 - len(flagged)} files repaired, {compared} carried members compared, edges bit-exact")
    p = run_cli("check", "edges", "--npz-dir", ext, "--json-dir", res.root, "--sample", "12", check_rc=0)
    n_masks = sum("masks.npy" in members for members in before.values())
    assert f"pickled members carried, not inspected: box_prompts_meta in 3, masks in {n_masks}" in p.stdout


def test_bulk_with_the_original_command_line(tmp_path, ref_model):
    states = ("fresh", "with_256", "feature_flagged", "stale", "no_edges", "fresh")
    res, kinds = _real(tmp_path / "sa1b", 8, 4, states)
    assert kinds["pickled masks"] >= 6 and kinds["deflated"] >= 2
    before = {p: raw_members(p) for p in res.npz}
    legacy = [q for q, s in res.states.items() if s == "feature_flagged"]
    digests = {q: sha(q) for q in legacy}
    p = run_cli(
        "features", "--root", res.root, *SMALL_TEACHER_FLAGS, "--log", tmp_path / "bulk.log", "--max-files", "0",
        check_rc=0,
    )  # fmt: skip
    assert f"updated {8 - len(legacy)}" in p.stdout and f"skipped (legacy flag) {len(legacy)}" in p.stdout
    worst, compared = 0.0, 0
    for q in res.npz:
        if q in legacy:  # feature_flag (int64, from the original's Python 1) without provenance: skipped
            assert sha(q) == digests[q]
            continue
        worst = max(worst, _features_match(q, ref_model, image_of(q), with_emb=True))  # the file had it: kept equal
        flags = store.read_flags(q, ["feature_flag"])
        assert int(flags["feature_flag"]) == 1
        compared += assert_carried(q, before[q], FEATURE_OWNED)
    print(f"bulk: {8 - len(legacy)} files, {compared} carried members compared, max |feature - reference| {worst:.2e}")


def test_sample_list_with_the_original_command_line(tmp_path, ref_model):
    res, _ = _real(tmp_path / "scattered", 5, 5, ("fresh",))
    for q in res.npz[:2]:  # files that never had IMAGE_EMB_S16: the sample-list tool adds it
        store.update(q, remove={"IMAGE_EMB_S16"})
    before = {p: raw_members(p) for p in res.npz}
    samples = tmp_path / "samples.txt"
    samples.write_text("".join(os.path.abspath(image_of(q)) + "\n" for q in res.npz))
    p = run_cli(
        "features", "--samples", samples, "--npz-dirs", f"{tmp_path / 'elsewhere'},{res.root}/extracted",
        *SMALL_TEACHER_FLAGS, "--log", tmp_path / "inplace.log", "--max-images", "0", check_rc=0,
    )  # fmt: skip
    assert "updated 5" in p.stdout
    worst = compared = 0
    for q in res.npz:
        worst = max(worst, _features_match(q, ref_model, image_of(q), with_emb=True))
        assert "feature_flag" not in store.inspect(q)  # the sample-list tool sets no flag
        compared += assert_carried(q, before[q], FEATURE_OWNED)
    print(f"samples: 5 files, {compared} carried members compared, max |feature - reference| {worst:.2e}")


def test_train_test_with_the_original_command_line(tmp_path, ref_model):
    splits = {}
    for i, split in enumerate(("train_1200", "test")):
        splits[split], _ = _real(tmp_path / split, 4, 10 + i, ("fresh", "no_edges"))
    before = {p: raw_members(p) for r in splits.values() for p in r.npz}
    dirs = ",".join(os.path.join(r.root, "extracted") for r in splits.values())
    p = run_cli(
        "features", "--extracted-dirs", dirs, *SMALL_TEACHER_FLAGS, "--log", tmp_path / "tt.log", "--max-files", "0",
        check_rc=0,
    )  # fmt: skip
    assert "updated 8" in p.stdout
    worst = compared = 0
    for q in before:
        worst = max(worst, _features_match(q, ref_model, image_of(q), with_emb=True))
        assert int(store.read_flags(q, ["feature_flag"])["feature_flag"]) == 1
        compared += assert_carried(q, before[q], FEATURE_OWNED)
    print(f"train/test: 8 files, {compared} carried members compared, max |feature - reference| {worst:.2e}")


def test_the_users_flat_layout_in_dagster(tmp_path):
    """``NPZFIX_SA1B_ROOT`` at a flat ``sa1b/`` (images and JSONs there, NPZs in ``sa1b/extracted``): one readable
    partition, found by the sensor, materialized, re-checked by the schedule; real-format files kept intact."""
    from dagster import instance_for_test

    with instance_for_test() as instance:
        _flat_layout_case(tmp_path, instance)


def _flat_layout_case(tmp_path, instance):
    from dagster import build_schedule_context, build_sensor_context, materialize
    from tests.support.dagster_support import TEACHER, md_of, resources

    from npzfix_dagster.assets import edges_B_v1, sa1b_features_fixed
    from npzfix_dagster.resources import DatasetRoots
    from npzfix_dagster.schedules import sa1b_daily_recheck
    from npzfix_dagster.sensors import sa1b_new_dirs_sensor
    from tests.dagster.test_sensors import _sensor_defs

    root = str(tmp_path / "sa1b")
    res = synth.generate(
        root, synth.SynthSpec(n=6, seed=6, sizes=((120, 160),), masks=6, states=("fresh", "with_256"), feature_hw=16)
    )
    before = {p: raw_members(p) for p in res.npz}
    roots = DatasetRoots(sa1b_root=root)
    ctx = build_sensor_context(instance=instance, definitions=_sensor_defs(root), resources={"roots": roots})
    tick = sa1b_new_dirs_sensor(ctx)
    assert [r.partition_key for r in tick.run_requests] == ["extracted"]
    instance.add_dynamic_partitions("sa1b_dirs", ["extracted"])
    r = resources(tmp_path, sa1b=root)
    result = materialize([sa1b_features_fixed, edges_B_v1], partition_key="extracted", instance=instance, resources=r)
    assert result.success
    for asset in ("sa1b_features_fixed", "edges_B_v1"):
        assert md_of(result, asset)["updated"].value == 6
    assert len(result.all_events) < 60  # the event log is for people: tens of events, not one per file
    for p in res.npz:
        assert_carried(p, before[p], EDGE_OWNED | FEATURE_OWNED)
    with build_schedule_context(instance=instance, resources={"roots": roots, "teacher": TEACHER}) as sc:
        recheck = sa1b_daily_recheck(sc)
    assert not isinstance(recheck, list) and "every one done" in recheck.skip_message


def _vfmkd_rewrite(path, compressed=True, **changes):
    """What vfmkd's other tools do to a file: load every member (pickles too), change some, write it whole."""
    with np.load(path, allow_pickle=True) as z:
        data = {k: z[k] for k in z.files}
    data.update(changes)
    (np.savez_compressed if compressed else np.savez)(path, **data)


def test_other_writers_aftermath_is_noticed(tmp_path, ref_model):
    """vfmkd's box-prompt tool rewriting a repaired file keeps it done (same content, now deflated); its in-place
    feature tool writing another teacher's P4 under our record, or an edge map changed under our flag, makes the
    file not done, and a default run redoes it; a file reverted whole (a lost update) is simply not done again."""
    from npzfix_core.provenance import EDGE_KEYS, FEATURE_KEYS, EdgeProvenance, FeatureProvenance, State

    res, _ = _real(tmp_path / "sa1b", 4, 8, ("fresh", "with_256"))
    ext = os.path.join(res.root, "extracted")
    run_cli("features", "--root", res.root, *SMALL_TEACHER_FLAGS, check_rc=0)
    run_cli("edges", "--npz-dir", ext, check_rc=0)
    prov = FeatureProvenance.from_dict(
        __import__("json").loads(str(store.read_flags(res.npz[0], FEATURE_KEYS)["feature_provenance"]))
    )
    edge = EdgeProvenance(3)

    def states(p):
        return prov.state(store.read_flags(p, FEATURE_KEYS)), edge.state(store.read_flags(p, EDGE_KEYS))

    assert all(states(p) == (State.DONE, State.DONE) for p in res.npz)
    reverted = res.npz[3]
    old = open(reverted, "rb").read()
    _vfmkd_rewrite(res.npz[0], box_prompts_meta=np.array(["strategy_B"], dtype=object))  # box prompts again
    other = np.ones((1, 256, SMALL_RES // 16, SMALL_RES // 16), np.float32)
    _vfmkd_rewrite(res.npz[1], compressed=False, P4_S16=other, IMAGE_EMB_S16=other)  # another teacher's P4
    edges = store.read_arrays(res.npz[2], ["edge_64x64"])["edge_64x64"]
    _vfmkd_rewrite(res.npz[2], edge_64x64=1 - edges)  # an edge map changed under our flag
    assert states(res.npz[0]) == (State.DONE, State.DONE)
    assert states(res.npz[1]) == (State.STALE, State.DONE)
    assert states(res.npz[2]) == (State.DONE, State.STALE)
    store.update(reverted, remove=set(FEATURE_KEYS) | set(EDGE_KEYS))  # as it was before npzfix: not done
    assert states(reverted) == (State.TODO, State.TODO) and old != open(reverted, "rb").read()
    p = run_cli("features", "--root", res.root, *SMALL_TEACHER_FLAGS, check_rc=0)
    assert "updated 2" in p.stdout and "skipped (already done) 2" in p.stdout
    p = run_cli("edges", "--npz-dir", ext, check_rc=0)
    assert "updated 2" in p.stdout
    assert all(states(q) == (State.DONE, State.DONE) for q in res.npz)
    _features_match(res.npz[1], ref_model, image_of(res.npz[1]), with_emb=True)

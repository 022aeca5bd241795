"""What wrote a file, and when it counts as done: the rules of design section 6, in one module."""

import json

import numpy as np

from npzfix_core.provenance import EdgeProvenance, FeatureProvenance, FeatureState, flag_set

TEACHER = FeatureProvenance("configs/sam2.1/sam2.1_hiera_t.yaml", "random-init:0", "fp32", 256)


def test_flags_are_read_leniently():
    import numpy as np

    from npzfix_core.provenance import EdgeProvenance

    assert flag_set({"f": np.array(1, np.uint8)}, "f") and flag_set({"f": np.array([1])}, "f")
    assert not flag_set({"f": np.array("1")}, "f") and not flag_set({"f": np.array([1, 1])}, "f")
    assert not flag_set({}, "f") and not flag_set({"f": np.array(0)}, "f")
    legacy = {"edge_flag": np.array([1], np.uint8), "edge_version": np.array("B_v1")}
    assert EdgeProvenance(3).is_done(legacy) and not EdgeProvenance(5).is_done(legacy)


def test_edge_provenance_round_trips_and_legacy_flags_count_as_kernel_3():
    arrays = EdgeProvenance(5).arrays()
    assert EdgeProvenance.stored(arrays) == EdgeProvenance(5) and EdgeProvenance(5).is_done(arrays)
    assert not EdgeProvenance(3).is_done(arrays)
    assert json.loads(str(arrays["edge_provenance"]))["tool"].startswith("npzfix")
    stale = {"edge_flag": np.array(1, np.uint8), "edge_version": np.array("A_v0")}
    assert EdgeProvenance.stored(stale) is None
    garbled = {**arrays, "edge_provenance": np.array("{not json")}
    assert EdgeProvenance.stored(garbled) is None


def test_feature_state_done_legacy_todo():
    done = {"feature_flag": np.array(1, np.uint8), "feature_provenance": TEACHER.record("bulk")}
    assert TEACHER.state(done) is FeatureState.DONE
    assert TEACHER.state({"feature_flag": np.array(1, np.uint8)}) is FeatureState.LEGACY
    assert TEACHER.state({}) is FeatureState.TODO
    other = FeatureProvenance(TEACHER.config, "random-init:1", "fp32", 256)
    assert other.state(done) is FeatureState.STALE  # another teacher: redo (and measure the drift)
    adopted = {**done, "feature_provenance": TEACHER.record("bulk", adopted={"verified": 2, "of": 9})}
    assert TEACHER.state(adopted) is FeatureState.DONE  # adoption evidence rides along, same teacher
    assert FeatureProvenance.from_dict(TEACHER.as_dict()) == TEACHER
    assert FeatureProvenance.from_dict({"config": "x"}) is None and not TEACHER.same_teacher(None)


def test_one_state_rule_for_edges_as_for_features(tmp_path):
    """Runners, checks and the schedule share ``state()``: a kernel change makes edges STALE (pending), as a
    teacher change makes features STALE; legacy features are not pending (left to --legacy)."""
    from npzfix_core.provenance import State
    from npzfix_core.checks import count_pending

    k3, k5 = EdgeProvenance(3), EdgeProvenance(5)
    assert k5.state(k5.arrays()) is State.DONE and k3.state(k5.arrays()) is State.STALE
    old_rule = {"edge_flag": np.array(1), "edge_version": np.array("A_v0")}
    assert k3.state({}) is State.TODO and k3.state(old_rule) is State.STALE
    assert EdgeProvenance.from_dict(k5.as_dict()) == k5 and EdgeProvenance.from_dict({"kernel_size": "5"}) is None
    assert [s.pending for s in State] == [False, False, True, True]  # DONE, LEGACY, STALE, TODO
    files = {}
    for name, arrays in {
        "done": {**k3.arrays(), "feature_flag": np.array(1, np.uint8), "feature_provenance": TEACHER.record("bulk")},
        "legacy": {**k3.arrays(), "feature_flag": np.array(1, np.uint8)},
        "kernel5": {**k5.arrays(), "feature_flag": np.array(1, np.uint8), "feature_provenance": TEACHER.record("bulk")},
    }.items():
        files[name] = str(tmp_path / f"{name}.npz")
        np.savez(files[name], P4_S16=np.zeros(1, np.float32), **arrays)
    assert count_pending([files["done"], files["legacy"]], TEACHER, k3, stop_at=None) == 0
    assert count_pending(list(files.values()), TEACHER, k3, stop_at=None) == 1  # the kernel-5 file
    assert count_pending(list(files.values()), TEACHER, None, stop_at=None) == 0  # features only
    other = FeatureProvenance(TEACHER.config, "random-init:1", "fp32", 256)
    assert count_pending(list(files.values()), other, None, stop_at=None) == 2  # legacy is not pending

"""The asset checks: no_failed_files and sample_valid catch tampered, wrong-valued and unverifiable files."""

import os

import numpy as np
from dagster import materialize
from tests.support.dagster_support import RES, check_results, evals, md_of, partition, resources, shard

from npzfix_core import store
from npzfix_core.provenance import EDGE_KEYS, EdgeProvenance
from npzfix_dagster.assets import edges_B_v1, sa1b_features_fixed
from npzfix_dagster.resources import Sam2Teacher


def test_checks_catch_a_tampered_file(tmp_path, instance):
    root = str(tmp_path / "sa1b")
    res = shard(root, "sa_000002", n=3, states=("fresh",) * 3)
    instance.add_dynamic_partitions("sa1b_dirs", ["sa_000002/extracted"])
    kw = dict(partition_key="sa_000002/extracted", instance=instance, resources=resources(tmp_path, sa1b=root))
    assert check_results(materialize([edges_B_v1], **kw)) == {"no_failed_files": True, "sample_valid": True}
    edge = store.read_arrays(res.npz[2], ["edge_64x64"])["edge_64x64"]
    edge[10, 10] ^= 1
    store.update(res.npz[2], {"edge_64x64": edge})  # changed under npzfix's record: its seal no longer matches
    result = materialize([edges_B_v1], **kw)
    assert md_of(result, "edges_B_v1")["updated"].value == 1  # so the run redid it
    assert check_results(result) == {"no_failed_files": True, "sample_valid": True}
    edge = store.read_arrays(res.npz[2], ["edge_64x64"])["edge_64x64"]
    edge[10, 10] ^= 1  # a record that lies (sealed over wrong edges): only recomputing can tell
    store.update(res.npz[2], {"edge_64x64": edge}, remove=set(EDGE_KEYS), seal=EdgeProvenance(3).arrays)
    result = materialize([edges_B_v1], **kw)  # skip-if-processed: nothing recomputed, the check still looks
    assert md_of(result, "edges_B_v1")["skipped_done"].value == 3
    assert check_results(result) == {"no_failed_files": True, "sample_valid": False}


def test_a_legacy_flagged_file_with_a_malformed_json_fails_the_check_not_the_step(tmp_path, instance):
    root, res, key, r = partition(tmp_path, instance, "sa_000040", n=2, states=("fresh", "fresh"))
    assert materialize([edges_B_v1], partition_key=key, instance=instance, resources=r).success
    bad = res.npz[0]
    arrays = store.read_arrays(bad)
    arrays.pop("edge_provenance")  # as the original tool left it: flag + B_v1, no provenance
    np.savez(bad, **arrays)
    with open(os.path.join(res.root, os.path.basename(bad).replace("_features.npz", ".json")), "w") as f:
        f.write("{broken")
    result = materialize([edges_B_v1], partition_key=key, instance=instance, resources=r)  # skip_if_processed
    assert result.success and md_of(result, "edges_B_v1")["skipped_done"].value == 2
    ev = evals(result)
    assert ev["no_failed_files"].passed and not ev["sample_valid"].passed
    details = ev["sample_valid"].metadata["details"].value
    assert os.path.basename(bad) in details and "malformed JSON" in details


def test_sample_valid_recomputes_and_catches_the_five_kinds_of_wrong_features(tmp_path, instance):
    from tests.support import plant_wrong_features

    root, res, key, r = partition(tmp_path, instance, "sa_000060", n=7, states=("fresh",))
    result = materialize([sa1b_features_fixed], partition_key=key, instance=instance, resources=r)
    ev = evals(result)["sample_valid"]
    assert ev.passed and ev.metadata["verified_by_value"].value == 2  # default: two files recomputed
    assert ev.metadata["min_cosine_P4_S16"].value == 1.0 and ev.metadata["verify_seconds"].value > 0
    planted = plant_wrong_features(res.npz[:5] + [res.npz[-1]], RES)  # they keep flag + provenance: they lie
    cfg = {"ops": {"sa1b_features_fixed": {"config": {"verify_sample": 7}}}}
    result = materialize([sa1b_features_fixed], partition_key=key, instance=instance, resources=r, run_config=cfg)
    assert md_of(result, "sa1b_features_fixed")["skipped_done"].value == 7  # the run trusts the flags...
    ev = evals(result)["sample_valid"]
    assert not ev.passed and ev.severity.value == "ERROR"  # ...the check does not
    details = ev.metadata["details"].value
    for npz, kind in planted.items():
        assert os.path.basename(npz) in details, kind
    assert ev.metadata["min_cosine_P4_S16"].value < 0.9
    assert evals(result)["no_failed_files"].passed


def test_legacy_noise_is_caught_then_verified_and_redone_and_drift_is_recorded(tmp_path, instance):
    states = ("fresh", "fresh", "feature_flagged", "fresh")
    root, res, key, r = partition(tmp_path, instance, "sa_000061", n=4, states=states)
    noise = res.npz[2]  # synth: the original tool's flag over N(0,1) features
    result = materialize([sa1b_features_fixed], partition_key=key, instance=instance, resources=r)
    assert md_of(result, "sa1b_features_fixed")["skipped_legacy"].value == 1
    ev = evals(result)["sample_valid"]  # a skipped legacy file is recomputed first
    assert not ev.passed and os.path.basename(noise) in ev.metadata["details"].value
    assert "legacy: verify" in ev.metadata["details"].value  # the remedy
    cfg = {"ops": {"sa1b_features_fixed": {"config": {"legacy": "verify"}}}}
    result = materialize([sa1b_features_fixed], partition_key=key, instance=instance, resources=r, run_config=cfg)
    md = md_of(result, "sa1b_features_fixed")
    assert md["updated"].value == 1 and "redone" in md["legacy"].value and os.path.basename(noise) in md["legacy"].value
    assert md["drift_min_cosine_P4_S16"].value < 0.5 and "held something unrelated" in md["drift_summary"].value
    assert evals(result)["sample_valid"].passed
    # nothing to do: the teacher is built for the check alone, which still recomputes its sample
    result = materialize([sa1b_features_fixed], partition_key=key, instance=instance, resources=r)
    assert md_of(result, "sa1b_features_fixed")["skipped_done"].value == 4
    ev = evals(result)["sample_valid"]
    assert ev.passed and ev.metadata["verified_by_value"].value == 2
    # a teacher change: every file redone, and the drift says how far the new checkpoint moved them
    other = {**r, "teacher": Sam2Teacher(random_init_seed=1, resolution=RES, device="cpu")}
    md = md_of(materialize([sa1b_features_fixed], partition_key=key, instance=instance, resources=other), "sa1b_features_fixed")
    assert md["updated"].value == 4 and md["drift"].value["candidates"] == 4 and md["drift"].value["sampled"] == 3  # the 1st, 2nd, 3rd
    assert list(md["drift"].value["from"]) == [f"configs/sam2.1/sam2.1_hiera_t.yaml random-init:0 fp32 @{RES}"]


def test_images_gone_make_sample_valid_warn_not_pass(tmp_path, instance):
    root, res, key, r = partition(tmp_path, instance, "sa_000062", n=2, states=("fresh", "fresh"))
    assert evals(materialize([sa1b_features_fixed], partition_key=key, instance=instance, resources=r))[
        "sample_valid"
    ].passed
    for p in res.npz:
        os.remove(os.path.join(res.root, os.path.basename(p).replace("_features.npz", ".jpg")))
    ev = evals(materialize([sa1b_features_fixed], partition_key=key, instance=instance, resources=r))["sample_valid"]
    assert not ev.passed and ev.severity.value == "WARN" and "not verifiable" in ev.metadata["details"].value

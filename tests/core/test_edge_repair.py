"""`npzfix edges` end to end: real files, the real CLI in a subprocess, content checked against the original formula."""

import json
import os
import resource
import signal
import subprocess
import time

import numpy as np
import pytest
from tests.support import EDGE_OWNED, NPZFIX, assert_carried, raw_members, run_cli, sha, temp_files

from npzfix_core import devices, discovery, edge_repair, store, synth
from npzfix_core.edges import method_b_reference, parse_sa1b


def _expected(npz, k=3):
    stem = os.path.basename(npz).replace("_features.npz", "")
    with open(os.path.join(os.path.dirname(os.path.dirname(npz)), stem + ".json")) as f:
        return method_b_reference(parse_sa1b(json.load(f)), k)


def test_cli_updates_every_good_file_exactly(dataset):
    ext = os.path.join(dataset.root, "extracted")
    before = {p: raw_members(p) for p, s in dataset.states.items() if s != "corrupt"}
    digests = {p: sha(p) for p in dataset.npz}
    p = run_cli("edges", "--npz-dir", ext, "--report", os.path.join(dataset.root, "rep"), check_rc=1)
    rep = json.load(open(os.path.join(dataset.root, "rep.json")))
    n_corrupt = sum(s == "corrupt" for s in dataset.states.values())
    n_nojson = sum(s == "no_json" for s in dataset.states.values())
    assert rep["counts"]["failed"] == n_corrupt and rep["counts"]["missing_source"] == n_nojson
    n_flagged = sum(s == "flagged" for s in dataset.states.values())  # by the original tool: skipped by default
    assert rep["counts"]["skipped_done"] == n_flagged
    assert rep["counts"]["updated"] == len(dataset.npz) - n_corrupt - n_nojson - n_flagged
    assert "seen 16" in p.stdout
    for path, state in dataset.states.items():
        if state in ("corrupt", "no_json", "flagged"):
            assert sha(path) == digests[path]
            continue
        got = store.read_arrays(path)
        want = _expected(path)
        np.testing.assert_array_equal(got["edge_64x64"], want[64])
        np.testing.assert_array_equal(got["edge_32x32"], want[32])
        assert got["edge_64x64"].dtype == np.uint8
        assert ("edge_256x256" in got) == (state in ("with_256", "flagged", "stale"))
        if "edge_256x256" in got:
            np.testing.assert_array_equal(got["edge_256x256"], want[256])
        assert got["edge_flag"] == np.uint8(1) and got["edge_flag"].dtype == np.uint8
        assert str(got["edge_version"]) == "B_v1"
        assert json.loads(str(got["edge_provenance"]))["kernel_size"] == 3
        assert assert_carried(path, before[path], EDGE_OWNED) >= 16  # vfmkd's keys, pickled masks included
    assert temp_files(ext) == []
    csv = open(os.path.join(dataset.root, "rep.csv")).read()
    assert "not a readable NPZ" in csv and "no JSON" in csv


def _legacy(path, version="B_v1"):
    store.update(path, {"edge_flag": np.array(1, np.uint8), "edge_version": np.array(version)})
    arrays = store.read_arrays(path)
    arrays.pop("edge_provenance", None)
    np.savez(path, **arrays)


def test_skip_if_processed_uses_version_and_kernel(tmp_path):
    res = synth.generate(
        tmp_path / "s", synth.SynthSpec(n=4, seed=1, sizes=((80, 90),), masks=8, states=("fresh",), feature_hw=4)
    )
    a, b, c, d = res.npz
    _legacy(a)  # original tool, B_v1, no provenance: counts as kernel 3
    _legacy(b, "A_v0")  # stale rule: redo
    ext = os.path.dirname(a)
    rep = edge_repair.run_edges(edge_repair.EdgeRequest(ext, skip_if_processed=True), progress=False)
    assert rep.counts["skipped_done"] == 1 and rep.counts["updated"] == 3
    # now all carry kernel-3 provenance: kernel 3 skips all, kernel 5 redoes all
    rep = edge_repair.run_edges(edge_repair.EdgeRequest(ext, skip_if_processed=True), progress=False)
    assert rep.counts["skipped_done"] == 4
    rep = edge_repair.run_edges(edge_repair.EdgeRequest(ext, kernel_size=5, skip_if_processed=True), progress=False)
    assert rep.counts["updated"] == 4
    got = store.read_arrays(a)
    np.testing.assert_array_equal(got["edge_64x64"], _expected(a, 5)[64])


@pytest.mark.parametrize("workers", ["1", "2"])
def test_max_files_counts_only_updates_and_dry_run_writes_nothing(tmp_path, workers):
    res = synth.generate(
        tmp_path / "s", synth.SynthSpec(n=7, seed=2, sizes=((50, 60),), masks=5, states=("fresh",), feature_hw=4)
    )
    ext = os.path.dirname(res.npz[0])
    digests = [sha(p) for p in res.npz]
    run_cli("edges", "--npz-dir", ext, "--dry-run", "--skip-if-processed", check_rc=0)
    assert [sha(p) for p in res.npz] == digests
    for expected_total in (3, 6, 7):
        p = run_cli(
            "edges",
            "--npz-dir",
            ext,
            "--max-files",
            3,
            "--skip-if-processed",
            "--set-edge-flag",
            "--workers",
            workers,
            check_rc=0,
        )
        done = sum("edge_flag" in store.inspect(q) for q in res.npz)
        assert done == expected_total, p.stdout


def test_workers_order_glob_and_json_dir(tmp_path):
    res = synth.generate(
        tmp_path / "s",
        synth.SynthSpec(n=6, seed=3, sizes=((70, 90), (260, 300)), masks=10, states=("fresh",), feature_hw=4),
    )
    ext = os.path.dirname(res.npz[0])
    jdir = tmp_path / "json"
    jdir.mkdir()
    for f in os.listdir(res.root):
        if f.endswith(".json"):
            os.rename(os.path.join(res.root, f), jdir / f)
    p = run_cli("edges", "--npz-dir", ext, check_rc=0)
    assert "missing source 6" in p.stdout  # JSON moved away from the default places
    p = run_cli("edges", "--npz-dir", ext, "--workers", "0", "--dry-run", "--report", tmp_path / "auto", check_rc=0)
    auto = json.load(open(tmp_path / "auto.json"))
    assert auto["request"]["worker_processes"] == devices.usable_cpus()  # 0: one per usable CPU, recorded as run
    p = run_cli(
        "edges",
        "--npz-dir",
        ext,
        "--json-dir",
        jdir,
        "--workers",
        "2",
        "--order",
        "mtime",
        "--glob",
        "*0000[1-4]_features.npz",
        check_rc=0,
    )
    assert "updated 4" in p.stdout
    for path in res.npz:
        has = "edge_flag" in store.inspect(path)
        assert has == (os.path.basename(path)[-14] in "1234")


def test_usage_errors_exit_2(tmp_path):
    assert run_cli("edges", "--npz-dir", tmp_path / "nope").returncode == 2
    assert run_cli("edges", "--npz-dir", tmp_path, "--kernel-size", "0").returncode == 2
    assert run_cli("edges").returncode == 2
    assert run_cli("edges", "--npz-dir", tmp_path, "--order", "size").returncode == 2


def test_each_kind_of_bad_input_is_a_reported_failure(tmp_path):
    res = synth.generate(
        tmp_path / "s", synth.SynthSpec(n=7, seed=4, sizes=((40, 50),), masks=4, states=("fresh",), feature_hw=4)
    )
    ext = os.path.dirname(res.npz[0])
    jsons = [os.path.join(res.root, os.path.basename(p).replace("_features.npz", ".json")) for p in res.npz]
    open(jsons[0], "w").write("{not json")
    doc = json.load(open(jsons[1]))
    doc["annotations"][0]["segmentation"]["size"] = [41, 50]
    json.dump(doc, open(jsons[1], "w"))
    os.remove(jsons[2])
    np.savez(res.npz[3], edge_flag=np.array([1, "x", None], dtype=object))  # a member npzfix reads, pickled
    open(res.npz[4], "wb").write(b"garbage" * 100)
    data = open(res.npz[5], "rb").read()
    open(res.npz[5], "wb").write(data[:-40])
    digests = [sha(p) for p in res.npz]
    rep = tmp_path / "r.json"
    run_cli("edges", "--npz-dir", ext, "--report", rep, check_rc=1)
    r = json.load(open(rep))
    reasons = {os.path.basename(f["path"])[-18:-13]: f["reason"] for f in r["failures"]}
    assert r["counts"] == {
        "updated": 1,
        "would_update": 0,
        "skipped_done": 0,
        "skipped_legacy": 0,
        "adopted": 0,
        "missing_source": 1,
        "failed": 5,
    }
    text = " | ".join(reasons.values())
    needles = ("malformed JSON", "disagrees with image size", "no JSON", "'edge_flag.npy' holds Python objects")
    for needle in (*needles, "not a readable NPZ"):
        assert needle in text, text
    assert [sha(p) for p in res.npz[:6]] == digests[:6]
    assert temp_files(ext) == []


def test_unwritable_directory(tmp_path, monkeypatch):
    res = synth.generate(
        tmp_path / "s", synth.SynthSpec(n=2, seed=5, sizes=((40, 50),), masks=4, states=("fresh",), feature_hw=4)
    )
    digests = [sha(p) for p in res.npz]

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", a[0] if a else None)

    # root ignores directory modes, so the refusal is injected where the temp file is created (in this process:
    # one file's work, as a worker process runs it)
    monkeypatch.setattr(store, "create_temp", lambda dfd, prefix: denied(prefix))
    req = edge_repair.EdgeRequest(os.path.dirname(res.npz[0]))
    for p in res.npz:
        outcome = edge_repair.process_one(p, discovery.find_json(p), req)
        assert outcome.status == "failed" and "Permission denied" in outcome.reason
    assert [sha(p) for p in res.npz] == digests


@pytest.mark.skipif(os.geteuid() == 0, reason="root bypasses directory permissions")
def test_unwritable_directory_for_real(tmp_path):
    res = synth.generate(
        tmp_path / "s", synth.SynthSpec(n=2, seed=5, sizes=((40, 50),), masks=4, states=("fresh",), feature_hw=4)
    )
    ext = os.path.dirname(res.npz[0])
    os.chmod(ext, 0o555)
    try:
        p = run_cli("edges", "--npz-dir", ext, check_rc=1)
        assert "Permission denied" in p.stdout
    finally:
        os.chmod(ext, 0o755)


def test_file_size_limit_mid_write_is_a_failure_not_damage(tmp_path):
    """A real write error from the kernel (RLIMIT_FSIZE -> EFBIG), as a full disk would give."""
    res = synth.generate(
        tmp_path / "s", synth.SynthSpec(n=3, seed=6, sizes=((40, 50),), masks=4, states=("fresh",), feature_hw=16)
    )
    digests = [sha(p) for p in res.npz]
    limit = os.path.getsize(res.npz[0]) // 2

    def cap():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    p = subprocess.run(
        [NPZFIX, "edges", "--npz-dir", os.path.dirname(res.npz[0])], capture_output=True, text=True, preexec_fn=cap
    )
    assert p.returncode == 1 and "failed 3" in p.stdout and "I/O error" in p.stdout
    assert [sha(q) for q in res.npz] == digests
    assert temp_files(os.path.dirname(res.npz[0])) == []


@pytest.mark.slow
def test_kill_9_leaves_old_or_new_and_rerun_finishes(tmp_path):
    res = synth.generate(
        tmp_path / "s", synth.SynthSpec(n=40, seed=8, sizes=((400, 600),), masks=30, states=("fresh",), feature_hw=32)
    )
    ext = os.path.dirname(res.npz[0])
    old = {p: sha(p) for p in res.npz}
    for delay in (0.4, 0.7, 1.0, 1.3):
        proc = subprocess.Popen(
            [NPZFIX, "edges", "--npz-dir", ext, "--skip-if-processed"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for p in res.npz:
            if sha(p) != old[p]:  # then it must be a complete, new file
                got = store.read_arrays(p)
                assert got["edge_flag"] == 1 and got["P4_S16"].shape == (1, 256, 32, 32)
    run_cli("edges", "--npz-dir", ext, "--skip-if-processed", check_rc=0)
    for p in res.npz:
        np.testing.assert_array_equal(store.read_arrays(p, ["edge_64x64"])["edge_64x64"], _expected(p)[64])
    assert temp_files(ext) == []


def test_json_without_annotations_fails_and_leaves_the_npz_untouched(tmp_path):
    """Issue 12 #1: a missing 'annotations' key is not 'no masks' (it zeroed the edges and flagged the file)."""
    res = synth.generate(
        tmp_path / "s", synth.SynthSpec(n=2, seed=3, sizes=((30, 40),), masks=4, states=("fresh",), feature_hw=4)
    )
    bad, good = res.npz
    ext = os.path.dirname(bad)
    stem = os.path.basename(good).replace("_features.npz", "")
    with open(os.path.join(os.path.dirname(ext), stem + ".json")) as f:
        doc = json.load(f)
    doc["annotations"] = []  # an explicit empty list stays a legitimate mask-less image
    with open(os.path.join(os.path.dirname(ext), stem + ".json"), "w") as f:
        json.dump(doc, f)
    with open(os.path.join(os.path.dirname(ext), os.path.basename(bad).replace("_features.npz", ".json")), "w") as f:
        f.write('{"image": {"height": 30, "width": 40}}')
    before = sha(bad)
    rep = edge_repair.run_edges(edge_repair.EdgeRequest(ext), progress=False)
    assert rep.counts["failed"] == 1 and rep.counts["updated"] == 1
    assert "annotations" in rep.failures[0]["reason"] and rep.failures[0]["path"] == bad
    assert sha(bad) == before
    got = store.read_arrays(good)
    assert got["edge_64x64"].sum() == 0 and int(got["edge_flag"]) == 1


def test_no_edge_flag_drops_the_flag_and_provenance_it_no_longer_vouches_for(tmp_path):
    """Issue 12 #2: k=3 edges written without a flag after a k=5 run must not be skipped as k=5 later."""
    res = synth.generate(
        tmp_path / "s", synth.SynthSpec(n=1, seed=4, sizes=((60, 70),), masks=6, states=("fresh",), feature_hw=4)
    )
    (npz,) = res.npz
    ext = os.path.dirname(npz)
    edge_repair.run_edges(edge_repair.EdgeRequest(ext, kernel_size=5), progress=False)
    assert json.loads(str(store.read_arrays(npz)["edge_provenance"]))["kernel_size"] == 5
    run_cli("edges", "--npz-dir", ext, "--kernel-size", 3, "--no-edge-flag", check_rc=0)
    got = store.read_arrays(npz)
    assert not {"edge_flag", "edge_version", "edge_provenance"} & set(got)
    np.testing.assert_array_equal(got["edge_64x64"], _expected(npz, 3)[64])
    rep = edge_repair.run_edges(edge_repair.EdgeRequest(ext, kernel_size=5, skip_if_processed=True), progress=False)
    assert rep.counts["updated"] == 1
    np.testing.assert_array_equal(store.read_arrays(npz)["edge_64x64"], _expected(npz, 5)[64])


def _started(paths, proc, timeout=60):
    """Wait until the run has updated a file (then it is busy with the rest)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        for q in paths:
            try:
                if "edge_provenance" in store.inspect(q):
                    return True
            except Exception:  # a file being replaced right now
                continue
        time.sleep(0.02)
    return False


def _slow_shard(tmp_path, n=40):
    return synth.generate(
        tmp_path / "s", synth.SynthSpec(n=n, seed=12, sizes=((700, 900),), masks=40, states=("fresh",), feature_hw=4)
    )


def test_a_directory_that_vanishes_mid_run_fails_the_run_and_leaves_no_temp(tmp_path):
    """Before: exit 0 with most files "missing source (file vanished)", and the in-flight temp left behind."""
    res = _slow_shard(tmp_path)
    ext = os.path.dirname(res.npz[0])
    proc = subprocess.Popen(
        [NPZFIX, "edges", "--npz-dir", ext], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert _started(res.npz, proc)
    moved = ext + "_moved"
    os.rename(ext, moved)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, out + err
    assert "vanished during the run (moved or deleted)" in out
    assert temp_files(moved) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signals_stop_a_run_with_its_summary_and_report(tmp_path, sig):
    """Before: SIGTERM ended a run silently (rc 143, no summary, no report)."""
    res = _slow_shard(tmp_path)
    ext = os.path.dirname(res.npz[0])
    rep = tmp_path / "rep"
    proc = subprocess.Popen(
        [NPZFIX, "edges", "--npz-dir", ext, "--report", rep, "--worker-processes", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert _started(res.npz, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    name = signal.Signals(sig).name
    assert proc.returncode == 128 + sig, out + err
    assert f"interrupted by {name}" in out and "seen" in out
    assert f"interrupted ({name}); every file is either untouched or fully updated" in err
    report = json.load(open(f"{rep}.json"))
    assert report["interrupted"] == name and 0 < report["counts"]["updated"] < 40
    run_cli("edges", "--npz-dir", ext, check_rc=0)
    assert temp_files(ext) == []
    assert all("edge_provenance" in store.inspect(q) for q in res.npz)

"""The Dagster project on a real (temporary) instance, and the real `dagster` CLI in subprocesses."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from conftest import BIN, NPZFIX, raw_members, sha
from dagster import (
    AssetKey,
    DagsterInstance,
    Definitions,
    build_schedule_context,
    build_sensor_context,
    instance_for_test,
    materialize,
)

from npzfix_core import store, synth
from npzfix_core.edges import method_b_reference, parse_sa1b
from npzfix_dagster.assets import edges_B_v1, sa1b_features_fixed, train_test_features_fixed
from npzfix_dagster.jobs import sa1b_job, sample_list_job
from npzfix_dagster.resources import DatasetRoots, Sam2Teacher
from npzfix_dagster.schedules import sa1b_daily_recheck
from npzfix_dagster.sensors import sa1b_new_dirs_sensor

RES = 256
TEACHER = Sam2Teacher(random_init_seed=0, resolution=RES, device="cpu")


@pytest.fixture
def instance(tmp_path):
    with DagsterInstance.ephemeral(tempdir=str(tmp_path / "home")) as inst:
        yield inst


def _partition(tmp_path, instance, name, **kw):
    """A shard under tmp_path/sa1b, registered as a partition: (root, synth result, key, resources)."""
    root = str(tmp_path / "sa1b")
    res = _shard(root, name, **kw)
    key = f"{name}/extracted"
    instance.add_dynamic_partitions("sa1b_dirs", [key])
    return root, res, key, _resources(tmp_path, sa1b=root)


def _shard(root, name, n=4, states=("fresh", "with_256", "flagged", "stale"), seed=0):
    return synth.generate(
        os.path.join(root, name),
        synth.SynthSpec(n=n, seed=seed, sizes=((120, 160), (300, 260)), masks=12, states=states, feature_hw=RES // 16),
    )


def _resources(tmp_path, sa1b=None, tt=None):
    return {
        "roots": DatasetRoots(sa1b_root=sa1b, train_test_root=tt, preview_dir=str(tmp_path / "previews")),
        "teacher": TEACHER,
    }


def _md(result, asset):
    mats = [
        e.event_specific_data.materialization
        for e in result.get_asset_materialization_events()
        if e.event_specific_data.materialization.asset_key == AssetKey(asset)
    ]
    return mats[-1].metadata


def _check_results(result):
    return {
        e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data.passed
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }


def test_edges_asset_materializes_partition_with_metadata_and_checks(tmp_path, instance):
    root = str(tmp_path / "sa1b")
    res = _shard(root, "sa_000001", states=("fresh", "with_256", "corrupt", "stale"))
    instance.add_dynamic_partitions("sa1b_dirs", ["sa_000001/extracted"])
    result = materialize(
        [edges_B_v1], partition_key="sa_000001/extracted", instance=instance, resources=_resources(tmp_path, sa1b=root)
    )
    assert result.success  # failures are recorded, not raised
    md = _md(result, "edges_B_v1")
    assert md["seen"].value == 4 and md["updated"].value == 3 and md["failed"].value == 1
    assert "not a readable NPZ" in md["failures"].value
    assert md["provenance"].value["kernel_size"] == 3
    assert os.path.exists(md["preview"].value) and os.path.exists(md["report"].value)
    checks = _check_results(result)
    assert checks == {"no_failed_files": False, "sample_valid": False}
    for p, s in res.states.items():
        if s == "corrupt":
            continue
        stem = os.path.basename(p).replace("_features.npz", "")
        want = method_b_reference(parse_sa1b(json.load(open(os.path.join(res.root, stem + ".json")))), 3)
        np.testing.assert_array_equal(store.read_arrays(p, ["edge_64x64"])["edge_64x64"], want[64])


def test_checks_catch_a_tampered_file(tmp_path, instance):
    root = str(tmp_path / "sa1b")
    res = _shard(root, "sa_000002", n=3, states=("fresh",) * 3)
    instance.add_dynamic_partitions("sa1b_dirs", ["sa_000002/extracted"])
    kw = dict(partition_key="sa_000002/extracted", instance=instance, resources=_resources(tmp_path, sa1b=root))
    assert _check_results(materialize([edges_B_v1], **kw)) == {"no_failed_files": True, "sample_valid": True}
    edge = store.read_arrays(res.npz[2], ["edge_64x64"])["edge_64x64"]
    edge[10, 10] ^= 1
    store.update(res.npz[2], {"edge_64x64": edge})
    result = materialize([edges_B_v1], **kw)  # skip-if-processed: nothing recomputed, the check still looks
    assert _md(result, "edges_B_v1")["skipped_done"].value == 3
    assert _check_results(result) == {"no_failed_files": True, "sample_valid": False}


def test_feature_assets_and_vanished_directory(tmp_path, instance):
    sa1b, tt = str(tmp_path / "sa1b"), str(tmp_path / "tt")
    a = _shard(sa1b, "sa_000003", n=2, states=("fresh", "feature_flagged"))
    _shard(tt, "train_1200", n=2, states=("fresh", "fresh"))
    instance.add_dynamic_partitions("sa1b_dirs", ["sa_000003/extracted", "gone/extracted"])
    instance.add_dynamic_partitions("train_test_splits", ["train_1200"])
    r = _resources(tmp_path, sa1b=sa1b, tt=tt)
    result = materialize([sa1b_features_fixed], partition_key="sa_000003/extracted", instance=instance, resources=r)
    md = _md(result, "sa1b_features_fixed")
    assert md["updated"].value == 1 and md["skipped_legacy"].value == 1
    assert md["provenance"].value["weights"] == "random-init:0"
    got = store.read_arrays(a.npz[0])
    assert got["P4_S16"].shape == (1, 256, 16, 16) and got["feature_flag"] == 1
    result = materialize([train_test_features_fixed], partition_key="train_1200", instance=instance, resources=r)
    assert _md(result, "train_test_features_fixed")["updated"].value == 2
    assert _check_results(result) == {"no_failed_files": True, "sample_valid": True}
    result = materialize(
        [edges_B_v1], partition_key="gone/extracted", instance=instance, resources=r, raise_on_error=False
    )
    assert not result.success
    failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0]
    assert "does not exist" in str(failure.event_specific_data.error)


def test_sample_list_job(tmp_path, instance):
    res = _shard(str(tmp_path), "s", n=3, states=("fresh",) * 3)
    images = [os.path.join(res.root, os.path.basename(p).replace("_features.npz", ".jpg")) for p in res.npz]
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(images))
    defs = Definitions(jobs=[sample_list_job], resources={"teacher": TEACHER})
    result = defs.get_job_def("sample_list_job").execute_in_process(
        instance=instance,
        run_config={
            "ops": {"fix_from_sample_list": {"config": {"samples": str(lst), "npz_dirs": [res.root], "max_images": 2}}}
        },
    )
    assert result.success
    mats = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    assert mats[0].event_specific_data.metadata["updated"].value == 2  # metadata, no pickled value
    flagged = [("feature_flag" in store.inspect(p), "feature_provenance" in store.inspect(p)) for p in res.npz]
    assert flagged == [(False, True), (False, True), (False, False)]


def _sensor_defs(root):
    return Definitions(
        assets=[sa1b_features_fixed, edges_B_v1],
        jobs=[sa1b_job],
        sensors=[sa1b_new_dirs_sensor],
        resources={"roots": DatasetRoots(sa1b_root=root), "teacher": TEACHER},
    )


def test_sensor_adds_partitions_and_requests_runs_once(tmp_path, instance):
    root = str(tmp_path / "sa1b")
    _shard(root, "sa_000010", n=2)
    defs = _sensor_defs(root)

    def tick(cursor):
        ctx = build_sensor_context(
            instance=instance, cursor=cursor, definitions=defs, resources={"roots": DatasetRoots(sa1b_root=root)}
        )
        return sa1b_new_dirs_sensor(ctx)

    r1 = tick(None)
    assert [rr.partition_key for rr in r1.run_requests] == ["sa_000010"]
    assert r1.dynamic_partitions_requests[0].partition_keys == ["sa_000010"]
    instance.add_dynamic_partitions("sa1b_dirs", ["sa_000010"])
    r2 = tick(r1.cursor)
    assert r2.run_requests == [] and r2.dynamic_partitions_requests == []
    # our own in-place rewrite changes the directory mtime but not its set of files: nothing to do
    p = os.path.join(root, "sa_000010", "extracted", os.listdir(os.path.join(root, "sa_000010", "extracted"))[0])
    store.update(p, {"x": np.zeros(1)})
    r3 = tick(r2.cursor)
    assert r3.run_requests == []
    # new files in a known directory, and a brand-new shard
    _shard(root, "sa_000010", n=3, seed=5)
    _shard(root, "sa_000011", n=1, seed=6)
    r4 = tick(r3.cursor)
    assert sorted(rr.partition_key for rr in r4.run_requests) == ["sa_000010", "sa_000011"]
    assert r4.dynamic_partitions_requests[0].partition_keys == ["sa_000011"]
    assert tick(r4.cursor).run_requests == []


def test_schedule_decides_from_the_instance_and_a_sample(tmp_path):
    """The daily re-check reads latest materializations, one stat per directory and two flags, never all files."""
    with instance_for_test() as instance:
        _schedule_case(tmp_path, instance)


def _schedule_case(tmp_path, instance):
    root = str(tmp_path / "sa1b")
    a = _shard(root, "sa_000020", n=2, states=("fresh", "fresh"))
    c = _shard(root, "sa_000022", n=2, states=("fresh", "fresh"), seed=2)
    _shard(root, "sa_000021", n=1, states=("fresh",))
    keys = ["sa_000020/extracted", "sa_000021/extracted", "sa_000022/extracted", "sa_000023/extracted", "../sa1b"]
    instance.add_dynamic_partitions("sa1b_dirs", keys)
    r = _resources(tmp_path, sa1b=root)
    for key in ("sa_000020/extracted", "sa_000022/extracted"):
        assert materialize([sa1b_features_fixed, edges_B_v1], partition_key=key, instance=instance, resources=r).success

    def tick(teacher=TEACHER):
        roots = DatasetRoots(sa1b_root=root)
        with build_schedule_context(instance=instance, resources={"roots": roots, "teacher": teacher}) as ctx:
            result = sa1b_daily_recheck(ctx)
        if not isinstance(result, list):
            return result.skip_message
        return {q.partition_key: q.tags["npzfix/reason"] for q in result}

    from npzfix_core import discovery

    listed = []
    real = discovery.npz_names_signature
    discovery.npz_names_signature = lambda d: listed.append(d) or real(d)
    try:
        assert tick() == {"sa_000021/extracted": "edges_B_v1 never materialized"}
    finally:
        discovery.npz_names_signature = real
    assert listed == []  # done partitions cost a stat and two flag reads: no listing
    new = os.path.join(os.path.dirname(c.npz[0]), "sa_new_features.npz")
    shutil.copy(c.npz[0], new)  # a file that lands after the run
    store.update(a.npz[1], remove={"edge_flag"})  # a flag removed behind Dagster's back (and a rewrite: new mtime)
    assert tick() == {
        "sa_000020/extracted": "a sampled file is not done (unflagged, or written by another teacher or kernel)",
        "sa_000021/extracted": "edges_B_v1 never materialized",
        "sa_000022/extracted": "edges_B_v1: NPZ files added or removed since the last run",
    }
    os.remove(new)
    store.update(a.npz[1], {"edge_flag": np.array(1, np.uint8)})
    other = Sam2Teacher(random_init_seed=1, resolution=RES, device="cpu")
    assert tick(other) == {
        "sa_000020/extracted": "sa1b_features_fixed: teacher changed since the last run",
        "sa_000021/extracted": "edges_B_v1 never materialized",
        "sa_000022/extracted": "sa1b_features_fixed: teacher changed since the last run",
    }
    for key in ("sa_000021/extracted",):
        materialize([sa1b_features_fixed, edges_B_v1], partition_key=key, instance=instance, resources=r)
    skip = tick()
    assert skip.startswith("5 partitions checked, every one done; 1 directories gone; 1 keys refused")
    # a new edge kernel: the UI shows every edges partition stale ("code version changed"); the schedule agrees
    os.environ["NPZFIX_EDGE_KERNEL"] = "5"
    try:
        change = "edges_B_v1: edge rule or kernel changed since the last run ("
        change += "method_b B_v1 kernel 3 -> method_b B_v1 kernel 5)"
        assert tick() == {k: change for k in ("sa_000020/extracted", "sa_000021/extracted", "sa_000022/extracted")}
    finally:
        del os.environ["NPZFIX_EDGE_KERNEL"]
    # files rewritten behind Dagster's back with another kernel: the sample says so, by the runners' own rule
    from npzfix_core.edge_repair import EdgeRequest, run_edges

    run_edges(EdgeRequest(npz_dir=os.path.dirname(a.npz[0]), kernel_size=5), progress=False)
    assert tick() == {
        "sa_000020/extracted": "a sampled file is not done (unflagged, or written by another teacher or kernel)"
    }


def _env(tmp_path, root):
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text(
        open(os.path.join(os.path.dirname(__file__), "..", "deploy", "dagster.yaml")).read()
    )
    return dict(
        os.environ,
        DAGSTER_HOME=str(home),
        NPZFIX_SA1B_ROOT=root,
        NPZFIX_RANDOM_INIT_SEED="0",
        NPZFIX_RESOLUTION=str(RES),
        NPZFIX_DEVICE="cpu",
        NPZFIX_PREVIEW_DIR=str(tmp_path / "previews"),
    )


def test_cli_partitions_sync_and_dagster_asset_materialize(tmp_path):
    root = str(tmp_path / "sa1b")
    res = _shard(root, "extracted_parent", n=2, states=("fresh", "fresh"))
    env = _env(tmp_path, os.path.join(root, "extracted_parent"))
    p = subprocess.run([NPZFIX, "partitions", "sync"], env=env, capture_output=True, text=True)
    assert p.returncode == 0 and "sa1b_dirs: added 1 (extracted)" in p.stdout, p.stdout + p.stderr
    before = [sha(q) for q in res.npz]
    cmd = [
        os.path.join(BIN, "dagster"),
        "asset",
        "materialize",
        "-m",
        "npzfix_dagster.definitions",
        "--select",
        "edges_B_v1",
        "--partition",
        "extracted",
    ]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert all(sha(q) != b for q, b in zip(res.npz, before))
    assert all(store.read_flags(q, ["edge_flag"])["edge_flag"] == 1 for q in res.npz)
    p = subprocess.run(cmd[:-1] + ["not_a_partition"], env=env, capture_output=True, text=True)
    assert p.returncode == 1
    p = subprocess.run([NPZFIX, "partitions", "list"], env=env, capture_output=True, text=True)
    assert "  extracted" in p.stdout


def test_definitions_load_without_torch():
    code = "import sys, npzfix_dagster.definitions as d; assert 'torch' not in sys.modules and 'sam2' not in sys.modules; print(len(d.defs.assets))"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == "5"  # three caches + the two observed NPZ-file sources, p.stderr


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_dagster_dev_serves_ui_and_graphql(tmp_path):
    env = _env(tmp_path, str(tmp_path))
    port = _free_port()
    proc = subprocess.Popen(
        [
            os.path.join(BIN, "dagster"),
            "dev",
            "-w",
            os.path.join(os.path.dirname(__file__), "..", "workspace.yaml"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline, body = time.time() + 120, None
        while time.time() < deadline:
            try:
                q = json.dumps(
                    {"query": "{ version repositoriesOrError { ... on RepositoryConnection { nodes { name } } } }"}
                ).encode()
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/graphql", data=q, headers={"Content-Type": "application/json"}
                )
                body = json.loads(urllib.request.urlopen(req, timeout=5).read())
                if body.get("data", {}).get("repositoriesOrError", {}).get("nodes"):
                    break
            except OSError:
                pass
            time.sleep(1)
        assert body and body["data"]["version"], body
        html = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
        assert "<html" in html.lower()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_dagster_selection_grammar_and_sam2_hydra_share_a_process():
    """Dagster's selection parser needs ANTLR 4.13, hydra (sam2) needs 4.9: both must work in one process."""
    code = (
        "import npzfix_dagster.definitions\n"
        "from dagster import AssetSelection\n"
        "s = AssetSelection.from_string('key:edges_B_v1 or key:sa1b_features_fixed')\n"
        "from npzfix_core.teacher import TeacherSpec, build\n"
        "t = build(TeacherSpec(random_init_seed=0, resolution=64))\n"
        "s2 = AssetSelection.from_string('edges_B_v1')\n"
        "print('ok', t.resolution)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == "ok 64", p.stdout + p.stderr[-2000:]


def test_missing_antlr_bridge_fails_loudly_with_the_fix(tmp_path):
    env = dict(os.environ, NPZFIX_ANTLR413_DIR=str(tmp_path / "nowhere"))
    p = subprocess.run(
        [sys.executable, "-c", "import npzfix_dagster.definitions"], capture_output=True, text=True, env=env
    )
    assert p.returncode != 0
    assert "AntlrBridgeError" in p.stderr and "-m npzfix_dagster.antlr_compat install" in p.stderr


def test_sensor_tick_on_an_unchanged_tree_lists_no_directory(tmp_path, instance, monkeypatch):
    """A tick's cost follows new work: with nothing new, directories are stat'ed, never listed."""
    from npzfix_core import discovery

    root = tmp_path / "sa1b"
    for i in range(30):
        d = root / f"sa_{i:06d}" / "extracted"
        d.mkdir(parents=True)
        for j in range(5):
            np.savez(d / f"s{i}_{j}_features.npz", x=np.zeros(1))
    defs = _sensor_defs(str(root))
    listings = []
    for name in ("subdirs", "holds_npz", "npz_names_signature"):
        real = getattr(discovery, name)
        monkeypatch.setattr(discovery, name, lambda d, _real=real, _n=name: listings.append((_n, d)) or _real(d))

    def tick(cursor):
        ctx = build_sensor_context(
            instance=instance, cursor=cursor, definitions=defs, resources={"roots": DatasetRoots(sa1b_root=str(root))}
        )
        return sa1b_new_dirs_sensor(ctx)

    first = tick(None)
    assert len(first.run_requests) == 30 and listings
    listings.clear()
    second = tick(first.cursor)
    assert second.run_requests == [] and listings == []
    np.savez(root / "sa_000007" / "extracted" / "new_features.npz", x=np.zeros(1))
    third = tick(second.cursor)
    assert [r.partition_key for r in third.run_requests] == ["sa_000007"]
    assert {d for _, d in listings} == {str(root / "sa_000007" / "extracted")}


def test_sensor_backlog_drains_without_relisting_and_split_sensor_keys(tmp_path, instance, monkeypatch):
    from npzfix_core import discovery
    from npzfix_dagster import sensors

    root = tmp_path / "sa1b"
    for i in range(25):
        d = root / f"sa_{i:06d}" / "extracted"
        d.mkdir(parents=True)
        np.savez(d / f"s{i}_features.npz", x=np.zeros(1))
    monkeypatch.setattr(sensors, "MAX_RUNS_PER_TICK", 10)
    defs = _sensor_defs(str(root))
    listed = []
    real = discovery.subdirs
    monkeypatch.setattr(discovery, "subdirs", lambda d: listed.append(d) or real(d))
    cursor, sizes = None, []
    for _ in range(4):
        listed.clear()
        ctx = build_sensor_context(
            instance=instance, cursor=cursor, definitions=defs, resources={"roots": DatasetRoots(sa1b_root=str(root))}
        )
        r = sensors.sa1b_new_dirs_sensor(ctx)
        sizes.append((len(r.run_requests), len(listed)))
        cursor = r.cursor
    assert [n for n, _ in sizes] == [10, 10, 5, 0]
    assert all(n_listed == 0 for _, n_listed in sizes[1:])  # the backlog is served from the cursor

    tt = tmp_path / "tt"
    for split in ("train_1200", "test"):
        d = tt / split / "extracted"
        d.mkdir(parents=True)
        np.savez(d / f"{split}_0_features.npz", x=np.zeros(1))
    (tt / "notes").mkdir()
    from npzfix_dagster.sensors import train_test_new_splits_sensor

    ctx = build_sensor_context(instance=instance, resources={"roots": DatasetRoots(train_test_root=str(tt))})
    r = train_test_new_splits_sensor(ctx)
    assert sorted(rr.partition_key for rr in r.run_requests) == ["test", "train_1200"]
    assert sorted(r.dynamic_partitions_requests[0].partition_keys) == ["test", "train_1200"]


def test_partition_keys_are_confined_to_their_root(tmp_path, instance):
    from npzfix_dagster.partitions import PartitionKeyError, key_dir, split_extracted_dir

    root = str(tmp_path / "sa1b")
    outside = _shard(str(tmp_path), "elsewhere", n=2, states=("fresh", "fresh"))
    inside = _shard(root, "sa 0001 ünï", n=1, states=("fresh",))  # spaces and unicode are legitimate
    os.makedirs(root, exist_ok=True)
    digests = {p: sha(p) for p in outside.npz}
    bad = [
        "../elsewhere/extracted",
        os.path.join(str(tmp_path), "elsewhere", "extracted"),
        "x/../../elsewhere/extracted",
    ]
    instance.add_dynamic_partitions("sa1b_dirs", [*bad, "sa 0001 ünï/extracted"])
    for key in bad:
        for asset in (edges_B_v1, sa1b_features_fixed):
            result = materialize(
                [asset],
                partition_key=key,
                instance=instance,
                resources=_resources(tmp_path, sa1b=root),
                raise_on_error=False,
            )
            assert not result.success
            failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0]
            assert "refusing partition" in str(failure.event_specific_data.error) and "no file was touched" in str(
                failure.event_specific_data.error
            )
    assert {p: sha(p) for p in outside.npz} == digests
    result = materialize(
        [edges_B_v1],
        partition_key="sa 0001 ünï/extracted",
        instance=instance,
        resources=_resources(tmp_path, sa1b=root),
    )
    assert _md(result, "edges_B_v1")["updated"].value == 1
    assert int(store.read_arrays(inside.npz[0], ["edge_flag"])["edge_flag"]) == 1
    for key in ("", "a/../b", "a/./b", "a/", "/abs", "~user/x", "a\0b"):
        with pytest.raises(PartitionKeyError):
            key_dir(root, key)
    with pytest.raises(PartitionKeyError):
        split_extracted_dir(root, "train/x")
    assert key_dir(root, "sa_1/extracted") == os.path.join(root, "sa_1/extracted")


def test_a_run_with_nothing_to_do_is_cheap_and_the_event_log_stays_short(tmp_path):
    """Done files need no source (the JPEGs may be gone); a run in which every file fails logs tens of events."""
    logs = {"python_logs": {"managed_python_loggers": ["npzfix"], "python_log_level": "INFO"}}  # as deploy/dagster.yaml
    with instance_for_test(overrides=logs) as instance:
        _cheap_run_case(tmp_path, instance)


def _cheap_run_case(tmp_path, instance):
    root, res, key, r = _partition(tmp_path, instance, "sa_000030", n=3, states=("fresh",) * 3)
    assert (
        _md(
            materialize([sa1b_features_fixed], partition_key=key, instance=instance, resources=r), "sa1b_features_fixed"
        )["updated"].value
        == 3
    )
    for name in os.listdir(res.root):
        if name.endswith(".jpg"):
            os.remove(os.path.join(res.root, name))
    md = _md(
        materialize([sa1b_features_fixed], partition_key=key, instance=instance, resources=r), "sa1b_features_fixed"
    )
    assert md["skipped_done"].value == 3 and md["missing_source"].value == 0

    ext = os.path.dirname(res.npz[0])
    for i in range(150):
        with open(os.path.join(ext, f"junk{i:03d}_features.npz"), "wb") as f:
            f.write(b"not a zip")
    result = materialize([edges_B_v1], partition_key=key, instance=instance, resources=r)
    assert _md(result, "edges_B_v1")["failed"].value == 150
    logs = instance.all_logs(result.run_id)
    per_file = [e for e in logs if "not a readable NPZ" in (e.user_message or "") and "junk" in e.user_message]
    assert len(per_file) <= 25  # the first 20, then a count (the failures table and report hold all 150)
    assert any("130 more failed files" in (e.user_message or "") for e in logs)
    assert len(logs) < 100


def test_a_legacy_flagged_file_with_a_malformed_json_fails_the_check_not_the_step(tmp_path, instance):
    root, res, key, r = _partition(tmp_path, instance, "sa_000040", n=2, states=("fresh", "fresh"))
    assert materialize([edges_B_v1], partition_key=key, instance=instance, resources=r).success
    bad = res.npz[0]
    arrays = store.read_arrays(bad)
    arrays.pop("edge_provenance")  # as the original tool left it: flag + B_v1, no provenance
    np.savez(bad, **arrays)
    with open(os.path.join(res.root, os.path.basename(bad).replace("_features.npz", ".json")), "w") as f:
        f.write("{broken")
    result = materialize([edges_B_v1], partition_key=key, instance=instance, resources=r)  # skip_if_processed
    assert result.success and _md(result, "edges_B_v1")["skipped_done"].value == 2
    evals = {
        e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }
    assert evals["no_failed_files"].passed and not evals["sample_valid"].passed
    details = evals["sample_valid"].metadata["details"].value
    assert os.path.basename(bad) in details and "malformed JSON" in details


def test_a_partition_is_the_files_directly_in_its_directory(tmp_path, instance):
    """Nested NPZ directories are partitions of their own: no asset of the outer one touches them."""
    from npzfix_dagster.partitions import discover, key_of

    root = str(tmp_path / "sa1b")
    outer = _shard(root, "sa_000050", n=2, states=("fresh", "fresh"))
    inner = _shard(os.path.join(root, "sa_000050", "extracted"), "more", n=1, states=("fresh",))
    keys = discover(root, None)["sa1b_dirs"]
    assert keys == ["sa_000050", "sa_000050/extracted/more"]  # short keys: the shared 'extracted' left out
    assert key_of("train_1200/extracted", "train_test_splits") == "train_1200"
    assert key_of("train_1200", "train_test_splits") is None and key_of("a/b/extracted", "train_test_splits") is None
    instance.add_dynamic_partitions("sa1b_dirs", keys)
    before = sha(inner.npz[0])
    r = _resources(tmp_path, sa1b=root)
    for asset in (sa1b_features_fixed, edges_B_v1):
        md = _md(materialize([asset], partition_key=keys[0], instance=instance, resources=r), asset.key.path[-1])
        assert md["seen"].value == 2
    assert sha(inner.npz[0]) == before and all(int(store.read_flags(p, ["edge_flag"])["edge_flag"]) for p in outer.npz)


def test_the_demo_ends_with_red_checks_only_for_its_corrupt_file(tmp_path):
    """Phase 1 (defaults): the legacy noise file of sa_000000 is caught by value, the corrupt file of sa_000001
    is red. Phase 2 (legacy: verify): the noise is redone, sa_000002's right legacy files are adopted with their
    bytes kept, and the corrupt file is the only red, named."""
    from npzfix_tools import demo
    from npzfix_dagster.partitions import sync

    sa1b, tt = demo.generate(str(tmp_path / "data"), RES)
    ext = os.path.join(sa1b, "sa_000001", "extracted")

    def unreadable(name):
        try:
            store.inspect(os.path.join(ext, name))
            return False
        except store.NpzError:
            return True

    (bad,) = [n for n in os.listdir(ext) if unreadable(n)]
    legacy0 = [p for p in _npzs(sa1b, "sa_000000") if _legacy(p)]
    legacy2 = _npzs(sa1b, "sa_000002")
    assert len(legacy0) == 1 and all(_legacy(p) for p in legacy2)
    before = {p: {k: v for k, v in raw_members(p).items() if k.startswith(("P4", "P5"))} for p in legacy2}
    r = {"roots": DatasetRoots(sa1b_root=sa1b, train_test_root=tt, preview_dir=str(tmp_path / "p")), "teacher": TEACHER}
    phase1, phase2 = [], []
    with instance_for_test() as instance:
        sync(instance, sa1b, tt)
        assert demo.observe(instance, sa1b, tt) == 5  # the source assets read filled in the UI
        for source, n in (("sa1b_npz_files", 3), ("train_test_npz_files", 2)):
            from dagster import AssetKey

            records = instance.fetch_observations(AssetKey(source), limit=100).records
            assert len({r.partition_key for r in records}) == n, source
        shards = instance.get_dynamic_partitions("sa1b_dirs")
        for assets, pdef in (
            ([sa1b_features_fixed, edges_B_v1], "sa1b_dirs"),
            ([train_test_features_fixed], "train_test_splits"),
        ):
            for key in instance.get_dynamic_partitions(pdef):
                res = materialize(assets, partition_key=key, instance=instance, resources=r, raise_on_error=False)
                phase1 += demo.check_results(instance, res.run_id)
        verify = {"ops": {"sa1b_features_fixed": {"config": {"legacy": "verify"}}}}
        for key in shards:
            res = materialize(
                [sa1b_features_fixed],
                partition_key=key,
                instance=instance,
                resources=r,
                run_config=verify,
                raise_on_error=False,
            )
            phase2 += demo.check_results(instance, res.run_id)
    corrupt = [
        f"{a}.{c} [sa_000001]: FAILED ({bad})"
        for a in ("edges_B_v1", "sa1b_features_fixed")
        for c in ("no_failed_files", "sample_valid")
    ]
    noise = f"sa1b_features_fixed.sample_valid [sa_000000]: FAILED ({os.path.basename(legacy0[0])})"
    assert sorted(g for g in phase1 if "FAILED" in g) == sorted([*corrupt, noise]), phase1
    assert len(phase1) == 2 * 2 * 3 + 2 * 2  # two checks of two assets on three shards, two checks on two splits
    assert sorted(g for g in phase2 if "FAILED" in g) == [c for c in corrupt if c.startswith("sa1b_")], phase2
    assert len(phase2) == 2 * 3
    assert not _legacy(legacy0[0]) and all(not _legacy(p) for p in legacy2)
    for p in legacy2:  # adopted, not rewritten
        assert {k: v for k, v in raw_members(p).items() if k in before[p]} == before[p]
        prov = json.loads(str(store.read_flags(p, ["feature_provenance"])["feature_provenance"]))
        assert prov["adopted"]["verified"] == 4 and prov["adopted"]["of"] == 6


def _npzs(root, shard):
    ext = os.path.join(root, shard, "extracted")
    return sorted(os.path.join(ext, n) for n in os.listdir(ext))


def _legacy(npz):
    flags = store.read_flags(npz, ["feature_flag", "feature_provenance"])
    return "feature_flag" in flags and int(flags["feature_flag"]) == 1 and "feature_provenance" not in flags


def test_dg_checks_lists_and_launches_this_project(tmp_path):
    """Dagster 1.13's own tooling works here: `dg check defs`, `dg list defs`, `dg launch`."""
    root = str(tmp_path / "sa1b")
    res = _shard(root, "sa_000060", n=2, states=("fresh", "fresh"))
    env = _env(tmp_path, root)
    dg = os.path.join(BIN, "dg")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([dg, "check", "defs"], env=env, cwd=repo, capture_output=True, text=True)
    assert p.returncode == 0 and "All definitions loaded successfully" in p.stdout + p.stderr, p.stderr[-2000:]
    p = subprocess.run([dg, "list", "defs", "--json"], env=env, cwd=repo, capture_output=True, text=True)
    listed = json.loads(p.stdout)
    keys = {a["asset_key"] for a in listed["assets"]}
    assert {"sa1b_features_fixed", "train_test_features_fixed", "edges_B_v1"} <= keys, keys
    assert subprocess.run([NPZFIX, "partitions", "sync"], env=env, capture_output=True).returncode == 0
    cmd = [dg, "launch", "--assets", "edges_B_v1", "--partition", "sa_000060"]
    p = subprocess.run(cmd, env=env, cwd=repo, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert all(store.read_flags(q, ["edge_flag"])["edge_flag"] == 1 for q in res.npz)


def test_short_keys_name_their_extracted_directory_and_old_keys_are_migrated(tmp_path):
    from npzfix_dagster.partitions import key_of, sa1b_dir, sync

    root = str(tmp_path / "sa1b")
    _shard(root, "sa_000070", n=1, states=("fresh",))
    _shard(root, "sa_000071", n=1, states=("fresh",))
    ext = os.path.join(root, "sa_000070", "extracted")
    assert sa1b_dir(root, "sa_000070") == ext == sa1b_dir(root, "sa_000070/extracted")  # old spelling still works
    assert key_of("sa_000070/extracted", "sa1b_dirs") == "sa_000070" and key_of("extracted", "sa1b_dirs") == "extracted"
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("sa1b_dirs", ["sa_000070/extracted"])
        added = sync(instance, root, None)
        assert added["sa1b_dirs"] == ["sa_000070", "sa_000071"]
        assert added["migrated"] == ["sa_000070/extracted -> sa_000070"]
        assert instance.get_dynamic_partitions("sa1b_dirs") == ["sa_000070", "sa_000071"]


def test_lineage_and_staleness_the_dagster_way(tmp_path):
    """The UI's stale badge, through Dagster's own resolver: new NPZ files upstream ("upstream data") and a
    changed teacher ("code version") each make the partition stale; our own rewrites do not."""
    from dagster import AssetsDefinition
    from dagster._core.definitions.data_version import StaleStatus
    from dagster._utils.test.data_versions import get_stale_status_resolver

    from npzfix_dagster.assets import versioned
    from npzfix_dagster.sources import sa1b_npz_files

    root = str(tmp_path / "sa1b")
    res = _shard(root, "sa_000080", n=2, states=("fresh", "fresh"))
    key = "sa_000080"
    r = _resources(tmp_path, sa1b=root)
    assets = [sa1b_npz_files, *versioned(TEACHER, 3)]
    fixed = [a for a in assets[1:] if a.key.path[-1] != "train_test_features_fixed"]
    with instance_for_test() as instance:
        cursor = None

        def tick():  # what the daemon does with a sensor result: partitions, observations
            nonlocal cursor
            with build_sensor_context(instance=instance, cursor=cursor, resources={"roots": r["roots"]}) as ctx:
                out = sa1b_new_dirs_sensor(ctx)
            for req in out.dynamic_partitions_requests:
                instance.add_dynamic_partitions("sa1b_dirs", list(req.partition_keys))
            for ev in out.asset_events:
                instance.report_runless_asset_event(ev)
            cursor = out.cursor
            return out

        def status(asset, with_assets=assets):
            graph_assets = [AssetsDefinition(specs=[with_assets[0]]), *with_assets[1:]]
            resolver = get_stale_status_resolver(instance, graph_assets)
            return resolver.get_status(AssetKey(asset), key), resolver.get_stale_causes(AssetKey(asset), key)

        first = tick()
        assert [q.partition_key for q in first.run_requests] == [key]
        materialize([sa1b_npz_files, *fixed], selection=fixed, partition_key=key, instance=instance, resources=r)
        for asset in ("edges_B_v1", "sa1b_features_fixed"):
            assert status(asset)[0] == StaleStatus.FRESH, status(asset)
        assert not tick().run_requests  # our own rewrites change no NPZ name: nothing observed, still fresh
        assert status("edges_B_v1")[0] == StaleStatus.FRESH

        shutil.copy(res.npz[0], os.path.join(os.path.dirname(res.npz[0]), "sa_new_features.npz"))
        tick()
        st, causes = status("edges_B_v1")
        assert st == StaleStatus.STALE and any(c.category.value == "DATA" for c in causes), causes
        materialize([sa1b_npz_files, *fixed], selection=fixed, partition_key=key, instance=instance, resources=r)
        assert status("edges_B_v1")[0] == StaleStatus.FRESH

        other = [sa1b_npz_files, *versioned(Sam2Teacher(random_init_seed=1, resolution=RES, device="cpu"), 3)]
        st, causes = status("sa1b_features_fixed", other)
        assert st == StaleStatus.STALE and [c.category.value for c in causes] == ["CODE"], causes
        assert status("edges_B_v1", other)[0] == StaleStatus.FRESH
        st, causes = status("edges_B_v1", [sa1b_npz_files, *versioned(TEACHER, 5)])
        assert st == StaleStatus.STALE and causes[0].category.value == "CODE"


def test_a_first_listing_beyond_the_tick_budget_is_finished_by_later_ticks(tmp_path, instance, monkeypatch):
    """A fresh SA-1B root may not be listed within one tick: what is left waits in the cursor, nothing is lost."""
    from npzfix_dagster import sensors

    root = str(tmp_path / "sa1b")
    for i in range(3):
        _shard(root, f"sa_00009{i}", n=1, states=("fresh",), seed=i)
    defs = _sensor_defs(root)
    monkeypatch.setattr(sensors, "LIST_BUDGET_S", 0.0)  # spent at once: only what is already known is walked
    with build_sensor_context(
        instance=instance, definitions=defs, resources={"roots": DatasetRoots(sa1b_root=root)}
    ) as ctx:
        first = sa1b_new_dirs_sensor(ctx)
    assert not first.run_requests and "listing budget spent" in first.skip_reason.skip_message
    monkeypatch.setattr(sensors, "LIST_BUDGET_S", 30.0)
    with build_sensor_context(
        instance=instance, definitions=defs, cursor=first.cursor, resources={"roots": DatasetRoots(sa1b_root=root)}
    ) as ctx:
        second = sa1b_new_dirs_sensor(ctx)
    assert sorted(r.partition_key for r in second.run_requests) == ["sa_000090", "sa_000091", "sa_000092"]


def _evals(result):
    return {
        e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }


def test_sample_valid_recomputes_and_catches_the_five_kinds_of_wrong_features(tmp_path, instance):
    from conftest import plant_wrong_features

    root, res, key, r = _partition(tmp_path, instance, "sa_000060", n=7, states=("fresh",))
    result = materialize([sa1b_features_fixed], partition_key=key, instance=instance, resources=r)
    ev = _evals(result)["sample_valid"]
    assert ev.passed and ev.metadata["verified_by_value"].value == 2  # default: two files recomputed
    assert ev.metadata["min_cosine_P4_S16"].value == 1.0 and ev.metadata["verify_seconds"].value > 0
    planted = plant_wrong_features(res.npz[:5] + [res.npz[-1]], RES)  # they keep flag + provenance: they lie
    cfg = {"ops": {"sa1b_features_fixed": {"config": {"verify_sample": 7}}}}
    result = materialize([sa1b_features_fixed], partition_key=key, instance=instance, resources=r, run_config=cfg)
    assert _md(result, "sa1b_features_fixed")["skipped_done"].value == 7  # the run trusts the flags...
    ev = _evals(result)["sample_valid"]
    assert not ev.passed and ev.severity.value == "ERROR"  # ...the check does not
    details = ev.metadata["details"].value
    for npz, kind in planted.items():
        assert os.path.basename(npz) in details, kind
    assert ev.metadata["min_cosine_P4_S16"].value < 0.9
    assert _evals(result)["no_failed_files"].passed


def test_legacy_noise_is_caught_then_verified_and_redone_and_drift_is_recorded(tmp_path, instance):
    states = ("fresh", "fresh", "feature_flagged", "fresh")
    root, res, key, r = _partition(tmp_path, instance, "sa_000061", n=4, states=states)
    noise = res.npz[2]  # synth: the original tool's flag over N(0,1) features
    result = materialize([sa1b_features_fixed], partition_key=key, instance=instance, resources=r)
    assert _md(result, "sa1b_features_fixed")["skipped_legacy"].value == 1
    ev = _evals(result)["sample_valid"]  # a skipped legacy file is recomputed first
    assert not ev.passed and os.path.basename(noise) in ev.metadata["details"].value
    assert "legacy: verify" in ev.metadata["details"].value  # the remedy
    cfg = {"ops": {"sa1b_features_fixed": {"config": {"legacy": "verify"}}}}
    result = materialize([sa1b_features_fixed], partition_key=key, instance=instance, resources=r, run_config=cfg)
    md = _md(result, "sa1b_features_fixed")
    assert md["updated"].value == 1 and "redone" in md["legacy"].value and os.path.basename(noise) in md["legacy"].value
    assert md["drift_min_cosine_P4_S16"].value < 0.5 and "held something unrelated" in md["drift_summary"].value
    assert _evals(result)["sample_valid"].passed
    # nothing to do: the teacher is built for the check alone, which still recomputes its sample
    result = materialize([sa1b_features_fixed], partition_key=key, instance=instance, resources=r)
    assert _md(result, "sa1b_features_fixed")["skipped_done"].value == 4
    ev = _evals(result)["sample_valid"]
    assert ev.passed and ev.metadata["verified_by_value"].value == 2
    # a teacher change: every file redone, and the drift says how far the new checkpoint moved them
    other = {**r, "teacher": Sam2Teacher(random_init_seed=1, resolution=RES, device="cpu")}
    md = _md(materialize([sa1b_features_fixed], partition_key=key, instance=instance, resources=other), "sa1b_features_fixed")
    assert md["updated"].value == 4 and md["drift"].value["candidates"] == 4 and md["drift"].value["sampled"] == 3  # the 1st, 2nd, 3rd
    assert list(md["drift"].value["from"]) == [f"configs/sam2.1/sam2.1_hiera_t.yaml random-init:0 fp32 @{RES}"]


def test_images_gone_make_sample_valid_warn_not_pass(tmp_path, instance):
    root, res, key, r = _partition(tmp_path, instance, "sa_000062", n=2, states=("fresh", "fresh"))
    assert _evals(materialize([sa1b_features_fixed], partition_key=key, instance=instance, resources=r))[
        "sample_valid"
    ].passed
    for p in res.npz:
        os.remove(os.path.join(res.root, os.path.basename(p).replace("_features.npz", ".jpg")))
    ev = _evals(materialize([sa1b_features_fixed], partition_key=key, instance=instance, resources=r))["sample_valid"]
    assert not ev.passed and ev.severity.value == "WARN" and "not verifiable" in ev.metadata["details"].value

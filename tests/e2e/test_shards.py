"""Training shards (``npzfix_core.shards``, ``npzfix shards``, the shards assets): stable membership, only changed
shards rebuilt, members read back identical, a killed rebuild leaves no partial shard, Pipes for the user's next step, and
the UI's stale/fresh against a real instance."""

import io
import os
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
from tests.support import NPZFIX, run_cli

from npzfix_core import shards, store, synth

SIZE = 4


def _data(tmp_path, n=10, seed=21, name="sa1b"):
    return synth.generate(
        tmp_path / name, synth.SynthSpec(n=n, seed=seed, sizes=((60, 80),), masks=3, states=("fresh",), feature_hw=8)
    )


def _shard_bytes(out):
    return {n: open(os.path.join(out, n), "rb").read() for n in sorted(os.listdir(out)) if n.endswith(".tar")}


def test_a_repair_rebuilds_exactly_the_shard_holding_it_and_members_read_back_identical(tmp_path):
    res = _data(tmp_path)
    ext, out = os.path.join(res.root, "extracted"), str(tmp_path / "shards")
    first = shards.sync(ext, out, shard_size=SIZE)
    assert (first.members, first.shards, len(first.rebuilt), first.new) == (10, 3, 3, 3)
    before = _shard_bytes(out)
    again = shards.sync(ext, out, shard_size=SIZE)
    assert again.rebuilt == [] and again.kept == 3 and _shard_bytes(out) == before
    target = shards.where(out, "sa_2100006")  # shard 1: members 5..8
    assert target["shard_file"].endswith("sa1b_shard_00001.tar")
    p = run_cli("edges", "--npz-dir", ext, "--sort-by", "name", "--glob", "sa_2100006_*", check_rc=0)
    assert "updated 1" in p.stdout
    after = shards.sync(ext, out, shard_size=SIZE)
    assert [r["name"] for r in after.rebuilt] == ["sa1b_shard_00001.tar"] and after.kept == 2
    assert after.reasons == {"npz_changed": 1}
    now = _shard_bytes(out)
    assert now["sa1b_shard_00000.tar"] == before["sa1b_shard_00000.tar"]
    assert now["sa1b_shard_00002.tar"] == before["sa1b_shard_00002.tar"]
    with tarfile.open(os.path.join(out, "sa1b_shard_00001.tar")) as tar:  # what the student's loader opens
        names = tar.getnames()
        assert names == [f"sa_210000{i}{suffix}" for i in (5, 6, 7, 8) for suffix in ("_features.npz", ".jpg")]
        for name in names:
            data = tar.extractfile(name).read()
            path = os.path.join(ext if name.endswith(".npz") else res.root, name)
            assert data == open(path, "rb").read()  # the file's own bytes: pickled members travel untouched
        with np.load(io.BytesIO(tar.extractfile("sa_2100006_features.npz").read()), allow_pickle=True) as z:
            on_disk = store.read_arrays(os.path.join(ext, "sa_2100006_features.npz"), ["edge_64x64"])
            np.testing.assert_array_equal(z["edge_64x64"], on_disk["edge_64x64"])
            assert "edge_provenance" in z.files and z["masks"].dtype == object
    p = run_cli("shards", "where", "sa_2100006", "--out", out, check_rc=0)
    assert "sa1b_shard_00001.tar" in p.stdout
    assert run_cli("shards", "where", "sa_9", "--out", out).returncode == 1


def test_added_files_never_move_a_member_and_removed_ones_leave_their_shard(tmp_path):
    res = _data(tmp_path, n=6)
    ext, out = os.path.join(res.root, "extracted"), str(tmp_path / "shards")
    shards.sync(ext, out, shard_size=SIZE)
    placed = {s: int(r["shard"]) for s, r in shards.read_manifest(out).items()}
    more = _data(tmp_path, n=5, seed=1, name="more")  # sa_100001.. sort before sa_2100001: a global sort would shift
    for p in more.npz:
        os.rename(p, os.path.join(ext, os.path.basename(p)))
        jpg = os.path.basename(p).replace("_features.npz", ".jpg")
        os.rename(os.path.join(more.root, jpg), os.path.join(res.root, jpg))
    os.remove(res.npz[0])  # and one member goes
    report = shards.sync(ext, out, shard_size=SIZE)
    now = {s: int(r["shard"]) for s, r in shards.read_manifest(out).items()}
    assert all(now[s] == placed[s] for s in placed if s != "sa_2100001")  # no existing member moved
    assert "sa_2100001" not in now and len(now) == 10
    assert sorted(now[s] for s in now if s.startswith("sa_1000")) == [1, 1, 2, 2, 2]  # new ones fill, then open
    assert report.reasons == {"removed": 1, "new": 5}
    with tarfile.open(os.path.join(out, "sa1b_shard_00000.tar")) as tar:
        assert "sa_2100001_features.npz" not in tar.getnames()
    dry = run_cli("shards", "--npz-dir", ext, "--out", out, "--shard-size", SIZE, "--dry-run", check_rc=0)
    assert "would rebuild 0" in dry.stdout
    before = _shard_bytes(out)
    with open(os.path.join(out, "manifest.parquet"), "r+b") as f:  # a damaged manifest: said, nothing touched
        f.truncate(100)
    p = run_cli("shards", "--npz-dir", ext, "--out", out, "--shard-size", SIZE, check_rc=1)
    assert "manifest.parquet cannot be read" in p.stderr and "Traceback" not in p.stderr
    assert _shard_bytes(out) == before


def test_a_killed_rebuild_leaves_every_shard_old_or_new(tmp_path):
    res = synth.generate(
        tmp_path / "sa1b",
        synth.SynthSpec(n=12, seed=3, sizes=((1500, 2250),), masks=3, states=("fresh",), feature_hw=64),
    )
    ext, out = os.path.join(res.root, "extracted"), str(tmp_path / "shards")
    shards.sync(ext, out, shard_size=6)
    before = _shard_bytes(out)
    for p in res.npz:
        store.update(p, {"edge_flag": np.array(1, np.uint8)})  # every member changed: both shards rebuild
    proc = subprocess.Popen([NPZFIX, "shards", "--npz-dir", ext, "--out", out, "--shard-size", "6"])
    deadline, caught = time.time() + 60, False
    while time.time() < deadline and not caught:
        caught = any(".npzfix-tmp-" in n and n.endswith(str(proc.pid)) for n in os.listdir(out))
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert caught  # killed while a shard was being written
    for name in before:  # each shard is the old one or a complete new one: never a partial file under its name
        with tarfile.open(os.path.join(out, name)) as tar:
            assert len(tar.getnames()) == 12
    report = shards.sync(ext, out, shard_size=6)  # the next run sweeps the partial one and finishes the work
    assert not any(".npzfix-tmp-" in n for n in os.listdir(out))
    assert shards.sync(ext, out, shard_size=6).rebuilt == [] and report.members == 12


def test_the_shards_asset_rebuilds_after_a_repair_and_runs_the_users_command_through_pipes(tmp_path, instance):
    from dagster import PipesSubprocessClient, materialize
    from tests.support.dagster_support import md_of, partition

    from npzfix_dagster.assets import edges_B_v1
    from npzfix_dagster.resources import DatasetRoots
    from npzfix_dagster.shards import sa1b_training_shards

    root, res, key, r = partition(tmp_path, instance, "sa_000090", n=5, states=("fresh",) * 5)
    r = {**r, "pipes_subprocess_client": PipesSubprocessClient()}
    shards_root = str(tmp_path / "shards")
    r["roots"] = DatasetRoots(sa1b_root=root, preview_dir=str(tmp_path / "previews"), shards_root=shards_root)
    script = tmp_path / "convert.py"
    script.write_text(
        "import sys, tarfile\nfrom dagster_pipes import open_dagster_pipes\n"
        "with open_dagster_pipes() as p:\n"
        "    shard = p.extras['shard']\n"
        "    n = len(tarfile.open(shard).getnames())\n"
        "    p.log.info(f'converted {shard}: {n} members')\n"
        "    p.report_asset_materialization(metadata={'tar_members': n})\n"
    )
    command = f"{sys.executable} {script} {{shard}}"
    config = {"ops": {"sa1b_training_shards": {"config": {"shard_size": 2, "command": command}}}}
    first = materialize([sa1b_training_shards], partition_key=key, instance=instance, resources=r, run_config=config)
    md = md_of(first, "sa1b_training_shards")
    assert md["shards_rebuilt"].value == 3 and md["shards_new"].value == 3 and "tar_members" in md["commands"].value
    assert materialize([edges_B_v1], partition_key=key, instance=instance, resources=r).success  # repairs all 5
    second = materialize([sa1b_training_shards], partition_key=key, instance=instance, resources=r, run_config=config)
    md = md_of(second, "sa1b_training_shards")
    assert md["shards_rebuilt"].value == 3 and md["members_by_reason"].value == {"npz_changed": 5}
    third = materialize([sa1b_training_shards], partition_key=key, instance=instance, resources=r, run_config=config)
    md = md_of(third, "sa1b_training_shards")
    assert md["shards_rebuilt"].value == 0 and md["shards_kept"].value == 3 and "commands" not in md
    said = [e.user_message for e in instance.all_logs(first.run_id)]
    assert sum("converted" in m and "2 members" in m or "converted" in m and "4 members" in m for m in said) == 3


STALE = """
query($key: AssetKeyInput!, $p: String) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode { staleStatus(partition: $p) staleCauses(partition: $p) { reason category key { path } } }
  }
}
"""


def test_the_ui_shows_the_shards_stale_after_a_repair_and_fresh_after_their_run(tmp_path):
    """Against a real instance and webserver: the real `dagster asset materialize`, the UI's own GraphQL query."""
    from tests.support.daemon_support import free_port, graphql, stop, wait_http
    from tests.support.dagster_support import env_for, shard

    from tests.support import BIN

    root = str(tmp_path / "sa1b")
    shard(root, "sa_000091", n=3, states=("fresh",) * 3)
    env = {**env_for(tmp_path, root), "NPZFIX_SHARDS_ROOT": str(tmp_path / "shards")}
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert subprocess.run([NPZFIX, "partitions", "sync"], env=env, capture_output=True).returncode == 0

    def materialize(select, **more_env):
        cmd = [os.path.join(BIN, "dagster"), "asset", "materialize", "-m", "npzfix_dagster.definitions",
               "--select", select, "--partition", "sa_000091"]  # fmt: skip
        p = subprocess.run(cmd, env={**env, **more_env}, cwd=repo, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]

    port = free_port()
    web = subprocess.Popen(
        [os.path.join(BIN, "dagster-webserver"), "-w", os.path.join(repo, "workspace.yaml"), "-h", "127.0.0.1",
         "-p", str(port)], env=env, cwd=repo, start_new_session=True, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        materialize("sa1b_features_fixed,edges_B_v1,sa1b_training_shards")
        wait_http(port, web)

        def status():
            got = graphql(port, STALE, {"key": {"path": ["sa1b_training_shards"]}, "p": "sa_000091"})
            node = got["data"]["assetNodeOrError"]
            return node["staleStatus"], [c for c in node["staleCauses"]]

        assert status() == ("FRESH", []), status()
        materialize("sa1b_features_fixed")  # nothing to redo: the same features, the same data version
        assert status() == ("FRESH", []), status()
        materialize("edges_B_v1", NPZFIX_EDGE_KERNEL="5")  # a repair: the edge rule changed, every file redone
        state, causes = status()
        assert state == "STALE" and causes[0]["key"]["path"] == ["edges_B_v1"], causes
        materialize("sa1b_training_shards")
        assert status() == ("FRESH", []), status()
        materialize("edges_B_v1", NPZFIX_EDGE_KERNEL="5")  # nothing left to repair
        assert status() == ("FRESH", []), status()
    finally:
        stop(web)

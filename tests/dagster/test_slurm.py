"""Partition steps as Slurm jobs through Dagster Pipes, end to end: a real munge + slurmctld + slurmd (one node,
4 fake GPUs), the real daemon and webserver, a backfill launched as the UI does. Skips with the reason where
Slurm cannot run (not root, packages missing); ``.ci/run`` installs them."""

import json
import os
import re
import subprocess
import time

import numpy as np
import pytest
from tests.support import BIN, NPZFIX
from tests.support.daemon_support import BACKFILL, graphql, max_concurrent, overlap, start_daemon_and_webserver, stop

from npzfix_core import store, synth
from npzfix_core.edges import method_b_reference, parse_sa1b
from npzfix_core.provenance import State
from npzfix_core.teacher import TeacherSpec, provenance
from npzfix_dagster.execution import pipes, slurm
from npzfix_tools import local_slurm

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARDS = tuple(f"sa_{i:06d}" for i in range(6))
GPUS, RES = 4, 128
FEATURES, EDGES = "sa1b_features_fixed", "edges_B_v1"
TERMINATE = """
mutation($runId: String!) {
  terminateRun(runId: $runId) { __typename ... on TerminateRunFailure { message } ... on PythonError { message } }
}
"""


def test_metadata_travels_through_pipes_as_a_local_run_writes_it():
    from dagster import MetadataValue

    md = {"n": 3, "x": 0.5, "p": MetadataValue.path("/d"), "m": MetadataValue.md("| a |")}
    md["j"] = MetadataValue.json({"a": 1})
    sent = pipes.to_pipes(md)
    assert sent["p"] == {"raw_value": "/d", "type": "path"} and sent["n"] == 3
    assert json.loads(json.dumps(sent)) == sent  # what goes over the file channel
    assert pipes.from_pipes(sent) == md


def test_inside_an_allocation_the_allocation_is_the_gpu_allowlist_and_sizes_the_step(tmp_path):
    from npzfix_core.requests import EdgeRequest, FeatureRequest
    from npzfix_core.teacher import TeacherSpec
    from npzfix_dagster.execution.steps import EdgeStep, FeatureStep

    spec = TeacherSpec(device="auto", gpus="1,2,4")
    step = FeatureStep(FeatureRequest("bulk", spec, root=str(tmp_path), decode_threads=15))
    inside = step.in_allocation(8)
    assert inside.gpus is None and inside.request.decode_threads == 7 and inside.device == "auto"
    assert step.in_allocation(0).request.decode_threads == 15 and step.in_allocation(1).request.decode_threads == 1
    edges = EdgeStep(EdgeRequest(str(tmp_path), worker_processes=1))
    assert edges.in_allocation(6).request.worker_processes == 6 and edges.in_allocation(0) == edges


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = local_slurm.missing()
    if why:
        pytest.skip(f"no Slurm here: {why}")
    d = str(tmp_path_factory.mktemp("slurm"))
    try:
        env = local_slurm.start(d, gpus=GPUS, cpus=8)  # 8 CPUs declared: the 4 GPUs bound GPU jobs, not the cores
    except local_slurm.SlurmUnavailable as exc:
        pytest.skip(f"Slurm did not start: {exc}")
    yield env
    local_slurm.stop(d)


def _scontrol(env, job_id) -> dict:
    out = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], env=env, capture_output=True, text=True)
    return dict(re.findall(r"(\w+)=(\S*)", out.stdout))


def _our_jobs(env) -> list[tuple[str, str, str]]:
    """(id, name, state) of npzfix's jobs Slurm has not finished."""
    out = subprocess.run(["squeue", "-h", "-o", "%i|%j|%T"], env=env, capture_output=True, text=True).stdout
    return [tuple(line.split("|")) for line in out.splitlines() if "|npzfix-" in line]


def _wait(what, fn, timeout=240, every=1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_a_backfill_runs_each_step_as_its_own_slurm_job(tmp_path, cluster):
    from dagster import AssetKey, DagsterEventType, DagsterInstance, DagsterRunStatus

    from npzfix_dagster.schedules import latest_metadata

    root = str(tmp_path / "sa1b")
    data = {
        s: synth.generate(
            os.path.join(root, s),
            synth.SynthSpec(
                n=2, seed=i, sizes=((120, 160),), masks=8, states=("fresh", "with_256"), feature_hw=RES // 16
            ),
        )
        for i, s in enumerate(SHARDS)
    }
    home = tmp_path / "home"
    home.mkdir()
    conf = open(os.path.join(REPO, "deploy", "dagster.yaml")).read()
    conf = conf.replace("max_concurrent_runs: 4", "max_concurrent_runs: 8")
    conf = conf.replace("default_limit: 1", "default_limit: 8")
    (home / "dagster.yaml").write_text(conf)  # pool gpu above the GPUs: Slurm, not Dagster, queues GPU jobs
    env = dict(
        os.environ,
        **cluster,
        DAGSTER_HOME=str(home),
        NPZFIX_SA1B_ROOT=root,
        NPZFIX_RANDOM_INIT_SEED="0",
        NPZFIX_RESOLUTION=str(RES),
        NPZFIX_DEVICE="auto",  # a GPU job: one GPU asked of Slurm; torch sees none (fake devices), so the CPU
        NPZFIX_EXECUTION="slurm",
        NPZFIX_SLURM_PARTITION=local_slurm.PARTITION,
        NPZFIX_SLURM_ARGS="--time=15",
        NPZFIX_SLURM_CPUS="1",
        NPZFIX_SLURM_DIR=str(tmp_path / "slurm_work"),
        NPZFIX_GPU_LEASE_DIR=str(tmp_path / "leases"),
        NPZFIX_PREVIEW_DIR=str(tmp_path / "previews"),
    )
    p = subprocess.run([NPZFIX, "partitions", "sync"], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    procs, port = start_daemon_and_webserver(env, REPO, BIN, str(tmp_path))
    try:
        instance = DagsterInstance.from_config(str(home))
        done = (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)

        def backfill(keys, assets):
            params = {"assetSelection": [{"path": [a]} for a in assets], "partitionNames": list(keys)}
            res = graphql(port, BACKFILL, {"params": params})
            assert res["data"]["launchPartitionBackfill"]["__typename"] == "LaunchBackfillSuccess", res
            return res["data"]["launchPartitionBackfill"]["backfillId"]

        t0 = time.time()
        bf = backfill(SHARDS, [FEATURES, EDGES])

        def finished():
            runs = [r for r in instance.get_runs() if r.tags.get("dagster/backfill") == bf]
            return runs if len(runs) == len(SHARDS) and all(r.status in done for r in runs) else None

        runs = _wait("the backfill", finished, timeout=480, every=2)
        wall = time.time() - t0
        assert all(r.status == DagsterRunStatus.SUCCESS for r in runs), [(r.run_id, r.status) for r in runs]

        # every step ran as its own Slurm job, in Slurm's own records too
        md = {a: latest_metadata(instance, a) for a in (FEATURES, EDGES)}
        assert all(set(m) == set(SHARDS) for m in md.values())
        jobs = {(a, k): str(m["slurm_job_id"]) for a in md for k, m in md[a].items()}
        assert len(set(jobs.values())) == 2 * len(SHARDS)
        records = {}
        for (asset, key), job_id in jobs.items():
            rec = records[job_id] = _scontrol(cluster, job_id)
            assert rec["JobState"] == "COMPLETED" and rec["JobName"] == f"npzfix-{asset}-{key}", rec
            assert ("gpu:1" in rec.get("TresPerNode", "")) == (asset == FEATURES), rec
            assert md[asset][key]["updated"] == 2 and md[asset][key]["failed"] == 0
        # Slurm gave each concurrent feature job its own GPU, and never more GPU jobs than GPUs (by its records)
        span = lambda rec: (_epoch(rec["StartTime"]), _epoch(rec["EndTime"]))  # noqa: E731
        feats = [(*span(records[jobs[(FEATURES, k)]]), k) for k in SHARDS]
        for a in feats:
            cvd = md[FEATURES][a[2]]["slurm_cuda_visible_devices"]
            assert cvd in {str(i) for i in range(GPUS)}, cvd
            for b in feats:
                if a is not b and overlap(a[:2], b[:2]):
                    assert cvd != md[FEATURES][b[2]]["slurm_cuda_visible_devices"], (a, b)
        peak = max_concurrent([f[:2] for f in feats])
        assert 1 <= peak <= GPUS
        assert all(md[EDGES][k]["slurm_cuda_visible_devices"] == "" for k in SHARDS)  # CPU jobs see no GPU

        # files exact: edges are Method B, features carry this teacher's provenance
        prov = provenance(TeacherSpec(random_init_seed=0, resolution=RES))
        for s, res in data.items():
            for path in res.npz:
                got = store.read_arrays(path)
                assert prov.state(got) is State.DONE and got["P4_S16"].shape == (1, 256, RES // 16, RES // 16)
                stem = os.path.basename(path).replace("_features.npz", "")
                with open(os.path.join(res.root, stem + ".json")) as f:
                    want = method_b_reference(parse_sa1b(json.load(f)), 3)
                np.testing.assert_array_equal(got["edge_64x64"], want[64])
                np.testing.assert_array_equal(got["edge_32x32"], want[32])
        # checks came back through Pipes into the instance
        evaluations = [
            e.dagster_event.event_specific_data
            for r in runs
            for e in instance.all_logs(r.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)
        ]
        assert len(evaluations) == 2 * 2 * len(SHARDS) and all(ev.passed for ev in evaluations)
        assert instance.get_materialized_partitions(AssetKey(FEATURES)) == set(SHARDS)

        # a job cancelled outside Dagster fails its step with the job id and state; terminating a run cancels
        # its job: park every GPU behind a blocker so that the next feature jobs wait in the queue
        blocker = subprocess.run(
            ["sbatch", "--parsable", f"--gres=gpu:{GPUS}", "-c", "1", "-o", "/dev/null", "--wrap", "sleep 600"],
            env=cluster, capture_output=True, text=True, check=True,
        ).stdout.strip()
        try:
            outcomes = {}
            for key, how in ((SHARDS[0], "scancel"), (SHARDS[1], "terminate")):
                bf = backfill([key], [FEATURES])
                def waiting_for_gpus():  # Slurm queues what does not fit (the reason is set once it has looked)
                    ours = [j for j in _our_jobs(cluster) if key in j[1]]
                    return [j for j in ours if _scontrol(cluster, j[0])["Reason"] == "Resources"]

                job_id, _, state = _wait(f"{key}'s job queued for GPUs", waiting_for_gpus)[0]
                assert state == "PENDING"
                runs_of = lambda: [r for r in instance.get_runs() if r.tags.get("dagster/backfill") == bf]  # noqa: E731
                run = _wait("its run", runs_of)[0]
                if how == "scancel":
                    subprocess.run(["scancel", job_id], env=cluster, check=True)
                else:
                    res = graphql(port, TERMINATE, {"runId": run.run_id})
                    assert res["data"]["terminateRun"]["__typename"] == "TerminateRunSuccess", res
                ended = lambda: [r for r in [instance.get_run_by_id(run.run_id)] if r.status in done]  # noqa: E731
                run = _wait("the run to end", ended)[0]
                outcomes[how] = (job_id, run)
            job_id, run = outcomes["scancel"]
            assert run.status == DagsterRunStatus.FAILURE
            failure = [e for e in instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_FAILURE)][0]
            data = failure.dagster_event.step_failure_data
            text = f"{data.user_failure_data.description if data.user_failure_data else ''} {data.error}"
            assert f"slurm job {job_id} ended CANCELLED" in text, text
            job_id, run = outcomes["terminate"]
            assert run.status == DagsterRunStatus.CANCELED
            _wait("the cancelled job to leave the queue", lambda: not _our_jobs(cluster), timeout=60)
            assert _scontrol(cluster, job_id)["JobState"] == "CANCELLED"
        finally:
            subprocess.run(["scancel", blocker], env=cluster)
        assert not _our_jobs(cluster)  # no Slurm job of ours left behind

        t_first = min(_epoch(records[j]["SubmitTime"]) for j in records)
        print(f"\nbackfill of {len(SHARDS)} partitions x 2 assets as Slurm jobs: {wall:.0f} s wall; max concurrent "
              f"GPU jobs {peak} of {GPUS} GPUs")
        for (asset, key), job_id in sorted(jobs.items(), key=lambda kv: int(kv[1])):
            r, m = records[job_id], md[asset][key]
            print(
                f"job {job_id:>3} {asset:<20} {key}: submit +{_epoch(r['SubmitTime']) - t_first:.0f} s, start "
                f"+{_epoch(r['StartTime']) - t_first:.0f} s, end +{_epoch(r['EndTime']) - t_first:.0f} s; "
                f"CUDA_VISIBLE_DEVICES={m['slurm_cuda_visible_devices'] or '-'}"
            )
    finally:
        for proc in procs:
            stop(proc)


def _epoch(slurm_time: str) -> float:
    return time.mktime(time.strptime(slurm_time, "%Y-%m-%dT%H:%M:%S"))


def test_a_rerun_submits_again_and_skips_what_is_done_and_the_sample_list_op_runs_there_too(
    tmp_path, cluster, instance, monkeypatch
):
    """In-process runs with the slurm execution: a second run of a partition is a new Slurm job whose report says
    every file was already done; the sample-list op's metadata comes back as a Pipes message; a job that dies
    fails its step with the job id, the state and the tail of its log."""
    from dagster import Definitions, asset, materialize
    from tests.support.dagster_support import TEACHER, md_of, partition

    from npzfix_core.requests import EdgeRequest
    from npzfix_dagster.execution import steps
    from npzfix_dagster.assets import edges_B_v1, sa1b_features_fixed
    from npzfix_dagster.execution import Execution
    from npzfix_dagster.jobs import sample_list_job
    from npzfix_dagster.resources import FeaturePipeline

    for k, v in cluster.items():  # the step (this process) calls sbatch and scontrol
        monkeypatch.setenv(k, v)
    execution = Execution(mode="slurm", slurm_cpus=1, slurm_dir=str(tmp_path / "work"), slurm_partition="gpu")
    root, res, key, r = partition(tmp_path, instance, "sa_000040", n=2, states=("fresh", "fresh"))
    r = {**r, "execution": execution}
    first = md_of(materialize([edges_B_v1], partition_key=key, instance=instance, resources=r), "edges_B_v1")
    again = md_of(materialize([edges_B_v1], partition_key=key, instance=instance, resources=r), "edges_B_v1")
    assert first["updated"].value == 2 and again["updated"].value == 0 and again["skipped_done"].value == 2
    assert first["slurm_job_id"].value != again["slurm_job_id"].value
    assert _scontrol(cluster, again["slurm_job_id"].value)["JobState"] == "COMPLETED"
    assert slurm.job_record(again["slurm_job_id"].value)["JobState"] == "COMPLETED"
    assert slurm.job_record("987654") == {}  # neither the controller nor accounting knows it: no record, no error

    images = [os.path.join(res.root, os.path.basename(p).replace("_features.npz", ".jpg")) for p in res.npz]
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(images))
    defs = Definitions(
        jobs=[sample_list_job], resources={"teacher": TEACHER, "pipeline": FeaturePipeline(), "execution": execution}
    )
    cfg = {"samples": str(lst), "npz_dirs": [res.root], "report": str(tmp_path / "samples.report")}
    result = defs.get_job_def("sample_list_job").execute_in_process(
        instance=instance, run_config={"ops": {"fix_from_sample_list": {"config": cfg}}}
    )
    assert result.success
    md = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"][0].event_specific_data.metadata
    assert md["updated"].value == 2 and md["slurm_job_id"].value and md["report"].value.endswith(".json")
    assert all("feature_provenance" in store.inspect(p) for p in res.npz)

    # a job without the step's environment cannot reach its Pipes channel: said as such, with its log
    no_env = Execution(mode="slurm", slurm_cpus=1, slurm_args="--export=NONE", slurm_dir=str(tmp_path / "work"))
    result = materialize(
        [sa1b_features_fixed], partition_key=key, instance=instance, resources={**r, "execution": no_env},
        raise_on_error=False,
    )
    text = _failure_text(result)
    assert re.search(r"slurm job \d+ completed but reported nothing through Dagster Pipes.*--export=NONE", text), text

    # sbatch refusing the job (a partition that does not exist) fails the step before anything is touched
    bad = Execution(mode="slurm", slurm_partition="nope", slurm_dir=str(tmp_path / "work"))
    result = materialize(
        [edges_B_v1], partition_key=key, instance=instance, resources={**r, "execution": bad}, raise_on_error=False
    )
    text = _failure_text(result)
    assert "could not submit the step to Slurm" in text and "Invalid partition name" in text, text

    # a job that fails (its directory vanished before it ran) fails the step with id, state and log tail
    @asset
    def doomed(context, execution: Execution):
        req = EdgeRequest(str(tmp_path / "gone"))  # the job finds it missing: a traceback, exit 1
        return execution.materialize(context, steps.EdgeStep(req), steps.Place.of(context, str(tmp_path)), None)

    result = materialize([doomed], instance=instance, resources={"execution": execution}, raise_on_error=False)
    text = _failure_text(result)
    want = r"slurm job \d+ ended FAILED \(.*ExitCode 1:0.*the tail of its log:.*does not exist"
    assert re.search(want, text, re.S), text


def _failure_text(result) -> str:
    assert not result.success
    failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0].event_specific_data
    return failure.user_failure_data.description


def test_pending_reasons_that_waiting_cannot_cure_are_told_apart():
    assert slurm.hopeless("PartitionConfig", 0, 0, None) and slurm.hopeless("QOSMaxCpuPerJobLimit", 0, 0, None)
    assert slurm.hopeless("AssocMaxWallDurationPerJobLimit", 0, 0, None) and slurm.hopeless("BadConstraints", 0, 0, None)
    assert not slurm.hopeless("Resources", 10_000, 10_000, None) and not slurm.hopeless("Priority", 0, 0, None)
    assert not slurm.hopeless("AssocGrpCpuLimit", 10_000, 10_000, None)  # frees up as other jobs end
    assert not slurm.hopeless("ReqNodeNotAvail", 60, 60, None) and slurm.hopeless("ReqNodeNotAvail", 400, 400, None)
    assert slurm.hopeless("Resources", 100, 100, 90.0)  # NPZFIX_SLURM_MAX_PENDING_S bounds any wait
    assert slurm._gpus_of("gpu:a100:4(S:0-1),shard:8") == 4 and slurm._gpus_of("(null)") == 0


def test_a_curable_wait_is_said_at_a_steady_pace_and_a_hopeless_one_ends_it(monkeypatch):
    records = iter(
        [{"JobState": "PENDING", "Reason": "Resources"}] * 4 + [{"JobState": "PENDING", "Reason": "PartitionConfig"}]
    )
    clock = [0.0]
    monkeypatch.setattr(slurm, "job_record", lambda job_id: next(records))
    monkeypatch.setattr(slurm.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(slurm.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + 200))
    said = []

    class Log:
        def info(self, msg):
            said.append(msg)

        warning = info

    with pytest.raises(slurm.Hopeless) as ei:
        slurm.follow("7", Log(), 1.0)
    assert ei.value.reason == "PartitionConfig"
    assert said == ["slurm job 7 queued (Resources)", "slurm job 7 still queued (Resources) for 7 min"]


def test_preempted_and_failed_node_jobs_are_retried_by_dagster(tmp_path, instance, monkeypatch):
    """PREEMPTED / NODE_FAIL / BOOT_FAIL: the step asks Dagster for a retry (RetryRequested), up to MAX_RETRIES,
    each a new job; then it fails with the state."""
    from dagster import asset, materialize

    from npzfix_core.requests import EdgeRequest
    from npzfix_dagster.execution import steps
    from npzfix_dagster.execution import Execution

    submitted = []
    monkeypatch.setattr(slurm, "RETRY_WAIT_S", 0)
    monkeypatch.setattr(slurm, "too_big", lambda *a: None)
    monkeypatch.setattr(slurm, "submit", lambda *a: submitted.append(1) or str(100 + len(submitted)))
    monkeypatch.setattr(slurm, "follow", lambda *a: {"JobState": "NODE_FAIL", "NodeList": "n1"})
    execution = Execution(mode="slurm", slurm_cpus=1, slurm_dir=str(tmp_path / "work"))

    @asset
    def unlucky(context, execution: Execution):
        req = EdgeRequest(str(tmp_path))
        return execution.materialize(context, steps.EdgeStep(req), steps.Place.of(context, str(tmp_path)), None)

    result = materialize([unlucky], instance=instance, resources={"execution": execution}, raise_on_error=False)
    assert not result.success and len(submitted) == slurm.MAX_RETRIES + 1
    restarts = [e for e in result.all_events if e.event_type_value == "STEP_RESTARTED"]
    assert len(restarts) == slurm.MAX_RETRIES
    assert "ended NODE_FAIL" in _failure_text(result)


def test_a_job_slurm_would_never_start_fails_fast_and_leaves_nothing_queued(tmp_path, cluster, instance, monkeypatch):
    """Before: a job pending with a reason no wait cures (PartitionConfig on a 2-CPU node) kept the run "in
    progress" forever. Now: a job no node could hold is refused before sbatch; one that sbatch accepts but Slurm
    will never start (here: --time over the partition's MaxTime) is cancelled and the step fails within seconds,
    naming the reason, what was asked and the settings to change."""
    from dagster import materialize
    from tests.support.dagster_support import partition

    from npzfix_dagster.assets import edges_B_v1
    from npzfix_dagster.execution import Execution

    for k, v in cluster.items():
        monkeypatch.setenv(k, v)
    root, res, key, r = partition(tmp_path, instance, "sa_000070", n=1, states=("fresh",))
    huge = Execution(mode="slurm", slurm_cpus=64, slurm_dir=str(tmp_path / "work"))
    result = materialize([edges_B_v1], partition_key=key, instance=instance, resources={**r, "execution": huge},
                         raise_on_error=False)  # fmt: skip
    text = _failure_text(result)
    assert "not submitted to Slurm: 64 CPU(s) asked, but the largest node" in text and "NPZFIX_SLURM_CPUS" in text
    subprocess.run(["scontrol", "update", "PartitionName=gpu", "MaxTime=1"], env=cluster, check=True)
    try:
        late = Execution(mode="slurm", slurm_cpus=1, slurm_args="--time=30", slurm_dir=str(tmp_path / "work"))
        t = time.monotonic()
        result = materialize([edges_B_v1], partition_key=key, instance=instance,
                             resources={**r, "execution": late}, raise_on_error=False)  # fmt: skip
        took = time.monotonic() - t
    finally:
        subprocess.run(["scontrol", "update", "PartitionName=gpu", "MaxTime=INFINITE"], env=cluster, check=True)
    text = _failure_text(result)
    assert re.search(r"slurm job \d+ cannot start: pending with Reason=Partition(Config|TimeLimit)", text), text
    assert "it asked for 1 CPU(s)" in text and "NPZFIX_SLURM_ARGS" in text and took < 60
    assert not _our_jobs(cluster)

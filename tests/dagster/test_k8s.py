"""The cluster path without a cluster: the Kubernetes Job that dagster-k8s's K8sRunLauncher would submit
for a feature run and for an edges run, built by the launcher itself from deploy/dagster-k8s.yaml."""

import json
import os

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: x}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


class _CapturingBatchApi:
    """Stands in for the Kubernetes API server: keeps the Job bodies the launcher submits."""

    def __init__(self):
        self.jobs = []

    def create_namespaced_job(self, body, namespace, **_):
        self.jobs.append((namespace, body))


@pytest.fixture
def k8s_instance(tmp_path, monkeypatch):
    pytest.importorskip("dagster_k8s")
    from dagster import instance_for_test

    from npzfix_tools import local_postgres

    url, _ = local_postgres.start(str(tmp_path / "pg"))

    cfg = yaml.safe_load(open(os.path.join(REPO, "deploy", "dagster-k8s.yaml")))
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    launcher = cfg["run_launcher"]
    launcher["config"].update(load_incluster_config=False, kubeconfig_file=str(kubeconfig))
    for name, value in {
        "NPZFIX_K8S_NAMESPACE": "npzfix",
        "NPZFIX_IMAGE": "registry.example/npzfix:0.1.0-cu128",
        "NPZFIX_SA1B_ROOT": "/data/sa1b",
        "NPZFIX_JSON_ROOT": "/data/sa1b",
        "NPZFIX_TRAIN_TEST_ROOT": "/data/train_test",
        "NPZFIX_PREVIEW_DIR": "/data/npzfix_previews",
        "NPZFIX_SAM2_WEIGHTS": "/data/weights/sam2.1_hiera_base_plus.pt",
        "NPZFIX_PG_URL": url,
    }.items():
        monkeypatch.setenv(name, value)
    try:
        # the deployment's instance as written (a real PostgreSQL), but for the kubeconfig
        with instance_for_test(overrides=cfg) as instance:
            api = _CapturingBatchApi()
            instance.run_launcher._api_client.batch_api = api
            yield instance, api
    finally:
        assert local_postgres.stop(str(tmp_path / "pg"))


def _launch(instance, job_name: str, partition: str):
    from dagster import DagsterRun
    from dagster._core.definitions.reconstruct import ReconstructableRepository
    from dagster._core.launcher import LaunchRunContext
    from dagster._core.test_utils import create_run_for_test

    from npzfix_dagster.definitions import defs

    recon = ReconstructableRepository.for_module("npzfix_dagster.definitions", "defs", working_directory=REPO)
    origin = recon.get_reconstructable_job(job_name).get_python_origin()
    tags = {**defs.resolve_job_def(job_name).tags, "dagster/partition": partition}  # as the UI/daemon tag a run
    run: DagsterRun = create_run_for_test(instance, job_name=job_name, job_code_origin=origin, tags=tags)
    instance.run_launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
    return run


def _pod(body):
    return body.spec.template.spec, body.spec.template.spec.containers[0]


def test_feature_run_gets_one_gpu_pod_and_edges_run_none(k8s_instance):
    instance, api = k8s_instance
    feat = _launch(instance, "sa1b_job", "sa_000020/extracted")
    edges = _launch(instance, "sa1b_edges_job", "sa_000020/extracted")
    assert len(api.jobs) == 2
    (ns, fjob), (_, ejob) = api.jobs
    assert ns == "npzfix"
    fspec, fc = _pod(fjob)
    res = fc.resources
    assert res.requests["nvidia.com/gpu"] == "1" and res.limits["nvidia.com/gpu"] == "1"
    assert res.requests["cpu"] == "15" and res.requests["memory"] == "48Gi"
    _, ec = _pod(ejob)
    assert "nvidia.com/gpu" not in (ec.resources.requests or {}) and "nvidia.com/gpu" not in (ec.resources.limits or {})
    assert ec.resources.requests["cpu"] == "8"
    eenv = {e.name: e.value for e in ec.env}  # one edge worker per requested CPU, beside the launcher's env
    assert eenv["NPZFIX_EDGE_WORKERS"] == "8" and eenv["NPZFIX_SA1B_ROOT"] == "/data/sa1b"
    assert "NPZFIX_EDGE_WORKERS" not in {e.name for e in fc.env}

    # image, command, environment: the run's own instance (PostgreSQL through NPZFIX_PG_URL), no local home
    assert fc.image == "registry.example/npzfix:0.1.0-cu128"
    assert fc.args[:3] == ["dagster", "api", "execute_run"]
    assert feat.run_id in fc.args[3] and "sa1b_job" in fc.args[3]
    # the run pod gets the instance (PostgreSQL storage) in its command, the URL only by name: no secret in args
    ref = json.loads(fc.args[3])["instance_ref"]["storage_data"]
    assert ref["class_name"] == "DagsterPostgresStorage"
    assert yaml.safe_load(ref["config_yaml"]) == {"postgres_url": {"env": "NPZFIX_PG_URL"}}
    assert os.environ["NPZFIX_PG_URL"] not in fc.args[3]
    env = {e.name: e.value for e in fc.env}
    assert (
        env["NPZFIX_SA1B_ROOT"] == "/data/sa1b" and env["NPZFIX_DEVICE"] == "auto" and env["NPZFIX_PRECISION"] == "bf16"
    )
    assert env["NPZFIX_SAM2_WEIGHTS"].endswith("sam2.1_hiera_base_plus.pt")
    assert env["DAGSTER_RUN_JOB_NAME"] == "sa1b_job"
    assert [s.secret_ref.name for s in fc.env_from if s.secret_ref] == ["npzfix-postgres"]
    assert [m.mount_path for m in fc.volume_mounts if m.name == "data"] == ["/data"]
    assert (
        fjob.metadata.labels["dagster/run-id"] == feat.run_id and ejob.metadata.labels["dagster/run-id"] == edges.run_id
    )
    print(f"feature pod: requests {res.requests}, limits {res.limits}; edges pod: requests {ec.resources.requests}")


def test_step_pods_get_the_same_resources_from_op_tags():
    """With the k8s_job_executor (one pod per step) the asset's op tags decide: features GPU, edges CPU."""
    pytest.importorskip("dagster_k8s")
    from dagster_k8s.job import get_user_defined_k8s_config

    from npzfix_dagster.assets import edges_B_v1, sa1b_features_fixed, train_test_features_fixed

    for asset, gpu in ((sa1b_features_fixed, "1"), (train_test_features_fixed, "1"), (edges_B_v1, None)):
        tags = asset.op.tags
        cfg = get_user_defined_k8s_config(tags)
        assert cfg.container_config["resources"]["requests"].get("nvidia.com/gpu") == gpu, asset.key

"""Kubernetes pod resources, as the ``dagster-k8s/config`` tag that dagster-k8s reads.

On a run's tags the K8sRunLauncher applies them to the run's one pod (one run per partition); on an op's
tags the k8s_job_executor applies them to that step's pod. Nothing here needs dagster-k8s installed.
"""

import json

from npzfix_dagster.env import EDGE_WORKERS_ENV

# A feature run holds one GPU, and CPU and memory for the JPEG decode threads that feed it (15 of a
# 16-core share); edges need no GPU.
GPU_POD = {
    "container_config": {
        "resources": {
            "requests": {"cpu": "15", "memory": "48Gi", "nvidia.com/gpu": "1"},
            "limits": {"memory": "64Gi", "nvidia.com/gpu": "1"},
        }
    }
}
EDGE_CPUS = 8
CPU_POD = {
    "container_config": {
        "resources": {"requests": {"cpu": str(EDGE_CPUS), "memory": "16Gi"}, "limits": {"memory": "24Gi"}},
        # one edge worker process per requested CPU (a request sets no cgroup limit the run could read)
        "env": [{"name": EDGE_WORKERS_ENV, "value": str(EDGE_CPUS)}],
    }
}
K8S_TAG = "dagster-k8s/config"
GPU_TAGS = {K8S_TAG: json.dumps(GPU_POD)}
CPU_TAGS = {K8S_TAG: json.dumps(CPU_POD)}

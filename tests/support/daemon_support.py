"""Shared by the end-to-end tests that run the real daemon and webserver: launching a backfill the way the UI
does (GraphQL), waiting for the webserver, stopping process groups, and step intervals read from the event log."""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request


BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on UnauthorizedError { message }
    ... on PartitionSetNotFoundError { message }
    ... on InvalidStepError { invalidStepKey }
    ... on InvalidOutputError { stepKey invalidOutputName }
  }
}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(port: int, query: str, variables: dict) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def wait_http(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "webserver exited"
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("webserver did not come up")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group by PID (it owns code servers and run workers), then SIGKILL."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def intervals(instance, run_ids) -> dict[str, list[tuple[float, float]]]:
    """step key -> [(start, end)] over the runs, from STEP_START and STEP_SUCCESS/FAILURE events."""
    from dagster import DagsterEventType

    out: dict[str, list[tuple[float, float]]] = {}
    for rid in run_ids:
        starts = {}
        for e in instance.all_logs(rid):
            if not e.is_dagster_event:
                continue
            t = e.dagster_event.event_type
            if t == DagsterEventType.STEP_START:
                starts[e.step_key] = e.timestamp
            elif t in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
                out.setdefault(e.step_key, []).append((starts[e.step_key], e.timestamp))
    return out


def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def max_concurrent(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])  # an end sorts before a start
    n = best = 0
    for _, d in edges:
        n += d
        best = max(best, n)
    return best


def start_daemon_and_webserver(env: dict, repo: str, bin_dir: str, logs) -> tuple[list[subprocess.Popen], int]:
    """The real ``dagster-daemon`` and ``dagster-webserver`` on the repo's workspace, each in its own process
    group (``stop`` ends their code servers and run workers too); returns them and the webserver's port once it
    answers. ``logs`` is a directory for their output."""
    ws, port, procs = os.path.join(repo, "workspace.yaml"), free_port(), []
    for cmd in (
        [os.path.join(bin_dir, "dagster-daemon"), "run", "-w", ws],
        [os.path.join(bin_dir, "dagster-webserver"), "-w", ws, "-h", "127.0.0.1", "-p", str(port)],
    ):
        log = open(os.path.join(logs, f"{os.path.basename(cmd[0])}.log"), "w")
        out = dict(stdout=log, stderr=subprocess.STDOUT)
        procs.append(subprocess.Popen(cmd, env=env, cwd=repo, start_new_session=True, **out))
    try:
        wait_http(port, procs[1])
    except BaseException:
        for p in procs:
            stop(p)
        raise
    return procs, port

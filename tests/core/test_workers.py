"""Worker processes (``npzfix_core.workers``): a worker that dies fails only its file, is replaced and remembered;
killing the main process takes its workers along. Real processes, real signals, the real CLI."""

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import time

from tests.support import NPZFIX, temp_files

from npzfix_core import edge_repair, synth


def _crash_on_second(path, *_):
    from npzfix_core.report import Outcome

    if path.endswith("1_features.npz"):
        os._exit(9)  # a worker killed mid-file (as the OOM killer would)
    return Outcome(path, "updated")


def test_a_dying_worker_process_fails_its_file_not_the_run(tmp_path):
    from npzfix_core.discovery import WorkItem
    from npzfix_core.progress import Progress
    from npzfix_core.report import RunReport
    from npzfix_core.workers import KillerRegistry

    items = [WorkItem(str(tmp_path / f"s{i}_features.npz"), None, f"s{i}") for i in range(12)]

    def run():
        report = RunReport("edges")
        edge_repair.run_bounded(
            iter(items),
            lambda it: (it.npz,),
            _crash_on_second,
            report,
            2,
            None,
            Progress(None, "t", enabled=False),
            KillerRegistry(str(tmp_path / "state")),
        )
        return report

    report = run()
    # only the file the dead worker held fails; the pool is replaced and every other file is processed
    assert report.seen == 12 and report.counts["updated"] == 10 and report.counts["failed"] == 2
    assert sorted(os.path.basename(f["path"]) for f in report.failures) == ["s11_features.npz", "s1_features.npz"]
    assert all("worker process exited with status 9 while processing this file" in f["reason"] for f in report.failures)
    again = run()  # remembered: the next run does not die at the same place
    assert again.counts["updated"] == 10 and all("earlier run" in f["reason"] for f in again.failures)


def _children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    with open(f"/proc/{d}/cmdline", "rb") as f:
                        out.append((int(d), f.read().replace(b"\0", b" ").decode(errors="replace")))
            except (OSError, IndexError, ValueError):
                continue
    return out


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _slow_shard(tmp_path, n):
    return synth.generate(
        tmp_path / "s", synth.SynthSpec(n=n, seed=8, sizes=((900, 1300),), masks=60, states=("fresh",), feature_hw=4)
    )


def _wait_for_workers(proc, n=2, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = [pid for pid, cmd in _children(proc.pid) if "spawn_main" in cmd]
        if len(workers) >= n:
            return workers
        time.sleep(0.05)
    raise AssertionError("workers did not start")


@contextlib.contextmanager
def _lock_held(path):
    """Hold the NPZ's lock as another writer would: the worker that reaches it waits, mid-file, for as long
    as the test needs (edges are too fast now for a sleep to land mid-run)."""
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        os.close(fd)


def _worker_waiting_on(proc, path, timeout=60):
    """The worker process that has ``path`` open (waiting for its lock)."""
    path = os.path.realpath(path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in _wait_for_workers(proc):
            with contextlib.suppress(OSError):
                fds = os.listdir(f"/proc/{pid}/fd")
                if any(_readlink(f"/proc/{pid}/fd/{fd}") == path for fd in fds):
                    return pid
        time.sleep(0.02)
    raise AssertionError(f"no worker reached {path}")


def _readlink(p):
    try:
        return os.readlink(p)
    except OSError:
        return None


def test_killing_a_worker_fails_only_its_file_and_the_run_goes_on(tmp_path):
    """Issue 12 #4: kill -9 of one of two workers mid-file."""
    res = _slow_shard(tmp_path, 40)
    ext = os.path.dirname(res.npz[0])
    rep = tmp_path / "rep"
    with _lock_held(res.npz[5]):
        proc = subprocess.Popen(
            [NPZFIX, "edges", "--npz-dir", ext, "--workers", "2", "--report", str(rep)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        os.kill(_worker_waiting_on(proc, res.npz[5]), signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, out + err
    report = json.load(open(str(rep) + ".json"))
    assert report["seen"] == 40 and report["counts"]["failed"] == 1 and report["counts"]["updated"] == 39
    assert report["failures"][0]["path"] == res.npz[5]
    assert "killed by SIGKILL while processing this file" in report["failures"][0]["reason"]
    assert temp_files(ext) == []


def test_killing_the_main_process_takes_its_workers_along(tmp_path):
    """Issue 12 #7: no orphaned workers (or resource tracker) after kill -9 of the main process."""
    res = _slow_shard(tmp_path, 40)
    with _lock_held(res.npz[5]):  # the run cannot end before the kill
        proc = subprocess.Popen(
            [NPZFIX, "edges", "--npz-dir", os.path.dirname(res.npz[0]), "--workers", "2"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _worker_waiting_on(proc, res.npz[5])
        kids = [pid for pid, _ in _children(proc.pid)]
        assert kids
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(k) for k in kids):
        time.sleep(0.1)
    assert not [k for k in kids if _alive(k)]


def test_the_killer_registry_survives_torn_lines_fifos_and_dry_runs(tmp_path):
    """Before: a line cut without its newline swallowed the next entry; a FIFO in its place hung every edges run;
    a dry run wrote it."""
    from npzfix_core.workers import KillerRegistry

    state = tmp_path / "state"
    state.mkdir()
    reg_path = state / "worker_killers.jsonl"
    reg_path.write_text('{"key": "a|b|1|2", "reason": "killed by SIG')  # torn by a crash mid-write
    KillerRegistry(str(state)).remember(str(tmp_path / "x_features.npz"), None, "killed by SIGSEGV")
    again = KillerRegistry(str(state))
    assert again.killed_before(str(tmp_path / "x_features.npz"), None) == "killed by SIGSEGV"
    dry = KillerRegistry(str(state), read_only=True)
    before = reg_path.read_bytes()
    dry.remember(str(tmp_path / "y_features.npz"), None, "killed by SIGKILL")
    assert reg_path.read_bytes() == before
    reg_path.unlink()
    os.mkfifo(reg_path)
    fifo = KillerRegistry(str(state))
    assert fifo.killed_before(str(tmp_path / "x_features.npz"), None) is None  # does not block
    fifo.remember(str(tmp_path / "x_features.npz"), None, "killed by SIGSEGV")  # nor here


def test_edges_runs_do_not_hang_on_a_fifo_registry_and_dry_runs_write_no_state(tmp_path):
    res = synth.generate(
        tmp_path / "s", synth.SynthSpec(n=3, seed=8, sizes=((40, 60),), masks=3, states=("fresh",), feature_hw=4)
    )
    state = tmp_path / "npzfix_state"
    env = dict(os.environ, NPZFIX_STATE_DIR=str(state))
    ext = os.path.dirname(res.npz[0])
    p = subprocess.run([NPZFIX, "edges", "--npz-dir", ext, "--dry-run", "--worker-processes", "2"], env=env,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert p.returncode == 0 and not state.exists()
    state.mkdir()
    os.mkfifo(state / "worker_killers.jsonl")
    p = subprocess.run([NPZFIX, "edges", "--npz-dir", ext, "--worker-processes", "2"], env=env,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert p.returncode == 0 and "updated 3" in p.stdout

"""GPU leases without a GPU: the device list and free memory are injected, the locks and processes are real."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from npzfix_core import devices

GIB = 2**30


def fake(n, free=None):
    free = free or [80 * GIB] * n
    return lambda: [devices.Gpu(i, p, free[i], 80 * GIB) for i, p in enumerate(devices.physical_ids(n))]


@pytest.fixture(autouse=True)
def lease_dir(tmp_path, monkeypatch):
    """Leases of this test only: the default lease directory (the core reads no environment) points here."""
    monkeypatch.setattr(devices, "default_lease_dir", lambda: str(tmp_path / "leases"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    yield tmp_path / "leases"
    devices.release_all()


def test_policy_without_gpus():
    assert devices.resolve("cpu") == "cpu"
    assert devices.resolve("auto", probe=lambda: []) == "cpu"
    with pytest.raises(devices.DeviceError):
        devices.resolve("cuda", probe=lambda: [])
    with pytest.raises(devices.DeviceError):
        devices.resolve("tpu")
    with pytest.raises(devices.DeviceError, match="machine has 2"):
        devices.resolve("cuda:2", probe=fake(2))
    with pytest.raises(devices.DeviceError, match="not in the allowed"):
        devices.resolve("cuda:0", gpus="1", probe=fake(2))
    assert devices.allowed_gpus("1,2,4,5,6,7") == [1, 2, 4, 5, 6, 7]
    assert devices.allowed_gpus("all") is None
    with pytest.raises(devices.DeviceError):
        devices.allowed_gpus("1,x")


def test_auto_skips_gpus_in_use_outside_npzfix_and_keeps_its_own_lease():
    probe = fake(3, free=[1 * GIB, 80 * GIB, 80 * GIB])
    assert devices.resolve("auto", gpus="0,1,2", probe=probe) == "cuda:1"
    assert devices.resolve("auto", gpus="0,1,2", probe=probe) == "cuda:1"  # same process: same lease
    assert devices.resolve("auto", probe=fake(1, free=[GIB])) == "cpu"  # busy, not leased by anyone: CPU


def test_cuda_visible_devices_names_the_lease(monkeypatch, lease_dir):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")  # a pod given GPU 3 sees it as cuda:0
    assert devices.resolve("auto", probe=fake(1)) == "cuda:0"
    assert os.listdir(lease_dir) == ["gpu-3.lease"]
    assert f"pid {os.getpid()}" in devices.holder(str(lease_dir), "3")


HOLDER = textwrap.dedent(
    """
    import os, sys, time
    from npzfix_core import devices
    GIB = 2**30
    probe = lambda: [devices.Gpu(i, str(i), 80 * GIB, 80 * GIB) for i in range(6)]
    dev = devices.resolve(sys.argv[1], gpus="1,2,4,5", probe=probe, wait_s=float(sys.argv[2]), lease_dir=sys.argv[4])
    print(f"{time.monotonic():.3f} {os.getpid()} {dev}", flush=True)
    time.sleep(float(sys.argv[3]))
    """
)


def _spawn(device="auto", wait=60.0, hold=600.0):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, device, str(wait), str(hold), devices.default_lease_dir()],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_eight_processes_on_four_gpus_get_distinct_leases_and_take_over_when_a_holder_dies():
    procs = [_spawn() for _ in range(8)]
    try:
        got = {}
        first = [p for p in procs]
        deadline = time.monotonic() + 60
        # the first four lines: four distinct allowed GPUs
        import selectors

        sel = selectors.DefaultSelector()
        for p in first:
            sel.register(p.stdout, selectors.EVENT_READ, p)
        while len(got) < 4 and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1):
                line = key.fileobj.readline()
                if line:
                    got[key.data] = line.split()
                    sel.unregister(key.fileobj)
        assert sorted(v[2] for v in got.values()) == ["cuda:1", "cuda:2", "cuda:4", "cuda:5"]
        time.sleep(1.5)  # the other four wait (no doubling up)
        assert not [k for k, _ in sel.select(timeout=0)]
        assert all(p.poll() is None for p in procs)
        holders = list(got)
        holders[0].send_signal(signal.SIGKILL)  # the kernel releases its lease
        holders[1].terminate()
        t_free = time.monotonic()
        taken = []
        while len(taken) < 2 and time.monotonic() < t_free + 30:
            for key, _ in sel.select(timeout=1):
                line = key.fileobj.readline()
                if line:
                    taken.append(line.split())
                    sel.unregister(key.fileobj)
        assert sorted(t[2] for t in taken) == sorted([got[holders[0]][2], got[holders[1]][2]])
        assert max(float(t[0]) for t in taken) - t_free < 5  # taken over within a couple of polls
        assert not [k for k, _ in sel.select(timeout=0)]  # still two waiting
        t_start = min(float(v[0]) for v in got.values())
        print(
            "\nlease timeline (s):",
            " ".join(f"{v[2]}@{float(v[0]) - t_start:.2f}" for v in got.values()),
            f"| holders of {got[holders[0]][2]} killed -9, {got[holders[1]][2]} terminated at {t_free - t_start:.2f}"
            " | taken over:",
            " ".join(f"{t[2]}@{float(t[0]) - t_start:.2f}" for t in taken),
        )
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_waiting_is_bounded_and_names_the_holder(lease_dir):
    holder = _spawn(device="cuda:4", wait=5)
    try:
        assert holder.stdout.readline().split()[2] == "cuda:4"
        t = time.monotonic()
        with pytest.raises(devices.DeviceError, match=f"cuda:4 \\(pid {holder.pid} on"):
            devices.resolve("cuda:4", probe=fake(6), wait_s=1.0)
        assert 0.9 < time.monotonic() - t < 5
    finally:
        holder.kill()
        holder.wait()
    assert devices.resolve("cuda:4", probe=fake(6), wait_s=5.0) == "cuda:4"


def test_usable_cpus_follow_affinity_and_a_container_limit(tmp_path):
    """A pod limited to 1.5 CPUs on a big node gets 2 workers, not the node's core count."""
    affinity = len(os.sched_getaffinity(0))
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert devices.usable_cpus(str(v2)) == min(affinity, 2)
    (v2 / "cpu.max").write_text("max 100000\n")
    assert devices.usable_cpus(str(v2)) == affinity
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("50000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert devices.usable_cpus(str(tmp_path / "v1")) == 1
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert devices.usable_cpus(str(tmp_path / "v1")) == affinity
    assert devices.usable_cpus(str(tmp_path / "none")) == affinity
    (v2 / "cpu.max").write_text("garbage\n")
    assert devices.usable_cpus(str(v2)) == affinity

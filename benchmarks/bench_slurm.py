"""What one Slurm job per step costs beside running the step in its own process: the same partitions
materialized in-process with ``execution`` local and slurm, side by side, interleaved.

Run by hand: ``.venv/bin/python benchmarks/bench_slurm.py [--partitions 3] [--files 20] [--device cpu]``.
Uses the cluster of ``$SLURM_CONF`` when set, else starts a private one (``npzfix_tools.local_slurm``: root and
``slurm-wlm munge`` needed; otherwise it says why and exits 0). The overhead is per step, not per file (a new
Python, the imports, the model built in the job, submit -> start): at SA-1B shape (~11,000 files per partition)
it is amortised over the whole partition, which this prints as a share of a partition's time.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--files", type=int, default=20, help="images per partition")
    ap.add_argument("--device", default="cpu", help="the teacher's device (auto asks Slurm for a GPU)")
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--sa1b-files", type=int, default=11_000, help="files of a real partition, for the share")
    a = ap.parse_args()

    from npzfix_tools import local_slurm

    tmp = tempfile.mkdtemp(prefix="npzfix-bench-slurm-")
    started = None
    try:
        if not os.environ.get("SLURM_CONF"):
            why = local_slurm.missing()
            if why:
                print(f"bench_slurm: skipped, no Slurm here: {why}")
                return 0
            try:
                os.environ.update(local_slurm.start(os.path.join(tmp, "cluster"), gpus=4, cpus=8))
            except local_slurm.SlurmUnavailable as exc:
                print(f"bench_slurm: skipped, no Slurm here: {exc}")
                return 0
            started = os.path.join(tmp, "cluster")
        return _bench(a, tmp)
    finally:
        if started:
            local_slurm.stop(started)
        shutil.rmtree(tmp, ignore_errors=True)


def _bench(a, tmp: str) -> int:
    from dagster import DagsterInstance, materialize

    from npzfix_core import synth
    from npzfix_dagster.assets import edges_B_v1, sa1b_features_fixed
    from npzfix_dagster.execution import Execution
    from npzfix_dagster.resources import DatasetRoots, FeaturePipeline, Sam2Teacher

    root = os.path.join(tmp, "sa1b")
    keys = []
    for i in range(a.partitions):
        spec = synth.SynthSpec(
            n=a.files, seed=i, sizes=((480, 720),), masks=30, states=("fresh",), feature_hw=a.resolution // 16
        )
        synth.generate(os.path.join(root, f"sa_{i:06d}"), spec)
        keys.append(f"sa_{i:06d}/extracted")
    teacher = Sam2Teacher(random_init_seed=0, resolution=a.resolution, device=a.device)
    modes = {
        "local": Execution(),
        "slurm": Execution(mode="slurm", slurm_cpus=2, slurm_dir=os.path.join(tmp, "work")),
    }
    times: dict[tuple[str, str], list[float]] = {}
    jobs = []
    for key in keys:
        for mode, execution in modes.items():  # interleaved: the machine's drift hits both alike
            instance = DagsterInstance.ephemeral()
            instance.add_dynamic_partitions("sa1b_dirs", [key])
            resources = {
                "roots": DatasetRoots(sa1b_root=root, preview_dir=os.path.join(tmp, "previews")),
                "teacher": teacher,
                "pipeline": FeaturePipeline(),
                "execution": execution,
            }
            for asset, cfg in ((edges_B_v1, {"skip_if_processed": False}), (sa1b_features_fixed, {"force": True})):
                t = time.perf_counter()
                res = materialize(
                    [asset],
                    instance=instance,
                    resources=resources,
                    partition_key=key,
                    run_config={"ops": {asset.op.name: {"config": cfg}}},
                )
                times.setdefault((asset.op.name, mode), []).append(time.perf_counter() - t)
                if mode == "slurm":
                    md = res.get_asset_materialization_events()[0].event_specific_data.materialization.metadata
                    jobs.append(md["slurm_job_id"].value)
    _report(a, times, jobs)
    return 0


def _report(a, times: dict, jobs: list[str]) -> None:
    """Seconds per step, local vs Slurm, the overhead's share of an SA-1B partition, and Slurm's own wait."""
    print(f"{a.partitions} partitions x {a.files} images, teacher on {a.device}, input {a.resolution}: s per step")
    print(f"{'asset':<22}{'local':>10}{'slurm':>10}{'overhead':>10}{'ratio':>8}")
    for name in ("edges_B_v1", "sa1b_features_fixed"):
        lo, sl = min(times[(name, "local")]), min(times[(name, "slurm")])
        print(f"{name:<22}{lo:>10.2f}{sl:>10.2f}{sl - lo:>10.2f}{sl / lo:>8.2f}")
        per_file = lo / a.files
        print(
            f"  at {a.sa1b_files:,} files per partition ({per_file * 1000:.0f} ms/file here): the overhead is "
            f"{100 * (sl - lo) / (per_file * a.sa1b_files):.2f} % of a partition"
        )
    waits = []
    for job in jobs:
        out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
        rec = dict(re.findall(r"(\w+)=(\S*)", out))
        if rec.get("SubmitTime") and rec.get("StartTime"):
            waits.append(_epoch(rec["StartTime"]) - _epoch(rec["SubmitTime"]))
    if waits:
        print(f"submit -> start (Slurm's records, 1 s resolution): max {max(waits):.0f} s over {len(waits)} jobs")


def _epoch(slurm_time: str) -> float:
    return time.mktime(time.strptime(slurm_time, "%Y-%m-%dT%H:%M:%S"))


if __name__ == "__main__":
    sys.exit(main())

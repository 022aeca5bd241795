"""The benchmarks that cannot run here in full still run: tiny settings, real code paths, checked output.

``bench_features_gpu.py`` is what a session with a GPU runs first; it must not have rotted meanwhile.
"""

import os
import re
import subprocess
import sys

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks")


def _run(cwd, script, *args):
    p = subprocess.run(
        [sys.executable, os.path.join(BENCH, script), *args], capture_output=True, text=True, timeout=600, cwd=cwd
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout


def test_gpu_benchmark_runs_end_to_end_on_a_cpu_in_smoke_mode(tmp_path):
    out = _run(
        tmp_path,
        "bench_features_gpu.py",
        "--smoke",
        "--device",
        "cpu",
        "--random-init",
        "0",
        "--config",
        "configs/sam2.1/sam2.1_hiera_t.yaml",
        "--resolution",
        "128",
        "--images",
        "4",
        "--batches",
        "1,2",
        "--seconds",
        "0.2",
        "--workers",
        "2",
    )
    for precision in ("bf16", "fp32"):
        assert re.search(rf"bare encoder {precision} batch  2: +[\d.]+ img/s", out), out
        assert re.search(rf"pipeline {precision} batch 16: +[\d.]+ img/s \(encoder busy \d+%", out), out
        assert re.search(rf"original loop {precision}: +[\d.]+ img/s", out), out


def test_pipeline_ceiling_benchmark_reports_every_stage(tmp_path):
    out = _run(tmp_path, "bench_pipeline_ceiling.py", "--images", "6", "--resolution", "128", "--workers", "1,2")
    assert out.count("decode threads  1:") == 2 and out.count("decode threads  2:") == 2, out
    assert "host CPU" in out and "waited on decode" in out and "on writers" in out, out
    assert re.search(r"16-core GPU host: [\d.]+ ms of host CPU per image .* feeds ~\d+ img/s", out), out


def test_verify_benchmark_separates_right_from_wrong_features(tmp_path):
    """The tolerance table behind ``check features``: every same-teacher case passes, every wrong kind is caught."""
    out = _run(tmp_path, "bench_verify.py", "--images", "3", "--resolution", "128")
    for case in ("same teacher fp32", "float16-stored", "bf16 vs fp32"):
        assert re.search(rf"{case}.*passes 3/3", out), out
    for case in ("another image", "read as BGR", "mirrored", "another checkpoint", "noise"):
        assert re.search(rf"{case}.*caught 3/3", out), out
    assert re.search(r"sample_valid cost per partition \(2 files, this CPU\): [\d.]+ s", out), out
    assert re.search(r"on an H100 \(estimate\): [\d.]+ GFLOP per image", out), out


def test_slurm_benchmark_measures_both_executions_or_says_why_not(tmp_path):
    out = _run(tmp_path, "bench_slurm.py", "--partitions", "1", "--files", "2")
    if "skipped, no Slurm here" in out:
        return
    for asset in ("edges_B_v1", "sa1b_features_fixed"):
        assert re.search(rf"{asset} +[\d.]+ +[\d.]+ +-?[\d.]+ +[\d.]+", out), out
    assert re.search(r"the overhead is -?[\d.]+ % of a partition", out) and "submit -> start" in out, out


def test_shards_benchmark_runs_in_smoke_size(tmp_path):
    out = _run(tmp_path, "bench_shards.py", "--files", "4", "--shard-size", "2")
    assert re.search(r"npzfix shards \(the one shard holding it\): +[\d.]+ s", out), out

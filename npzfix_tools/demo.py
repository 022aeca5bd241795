"""``make demo``: a seeded SA-1B-like dataset, a Dagster instance, the three assets materialized by the real CLI.

The teacher is a randomly initialised SAM2 (no checkpoint can be downloaded
here); every report, log line and file provenance says so.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def generate(data: str, resolution: int = 256) -> tuple[str, str]:
    """The demo dataset: SA-1B shards in every realistic state and two train/test splits.

    On purpose: one corrupt file in sa_000001; in sa_000000 a file the original feature tool flagged whose
    features are noise; sa_000002 holds only legacy files whose features are right (written by the demo's
    teacher, then stripped of provenance, as the original tool left them)."""
    from npzfix_core import store, synth
    from npzfix_core.feature_repair import run_features
    from npzfix_core.requests import BULK, FeatureRequest
    from npzfix_core.teacher import TeacherSpec

    sa1b, tt = os.path.join(data, "sa1b"), os.path.join(data, "train_test")
    sizes = ((480, 720), (720, 480), (300, 300), (64, 96))
    for i, shard in enumerate(("sa_000000", "sa_000001")):
        synth.generate(
            os.path.join(sa1b, shard),
            synth.SynthSpec(
                n=6,
                seed=i,
                sizes=sizes,
                masks=40,
                feature_hw=16,
                states=("fresh", "no_edges", "with_256", "flagged", "stale", "corrupt" if i else "feature_flagged"),
            ),
        )
    legacy = os.path.join(sa1b, "sa_000002")
    res = synth.generate(legacy, synth.SynthSpec(n=6, seed=2, sizes=sizes, masks=40, feature_hw=16, states=("fresh",)))
    teacher = TeacherSpec(random_init_seed=0, resolution=resolution)
    run_features(FeatureRequest(mode=BULK, root=legacy, teacher=teacher, decode_threads=2), progress=False)
    for p in res.npz:
        store.update(p, remove={"feature_provenance"})
    for i, split in enumerate(("train_1200", "test")):
        synth.generate(
            os.path.join(tt, split),
            synth.SynthSpec(
                n=4, seed=10 + i, sizes=sizes, masks=10, feature_hw=16, states=("fresh", "no_edges"), prefix=f"{split}_"
            ),
        )
    return sa1b, tt


def observe(instance, sa1b: str, tt: str) -> int:
    """Observe every partition's NPZ files, as the sensors do when they request a run, so that the UI shows
    the source assets filled (and, later, "upstream data changed" when a directory's names move)."""
    from npzfix_core import discovery
    from npzfix_dagster.partitions import sa1b_dir, split_extracted_dir
    from npzfix_dagster.sources import observation

    n = 0
    for pdef, root, to_dir in (("sa1b_dirs", sa1b, sa1b_dir), ("train_test_splits", tt, split_extracted_dir)):
        for key in instance.get_dynamic_partitions(pdef):
            sig = discovery.snapshot(to_dir(root, key)).signature
            instance.report_runless_asset_event(observation(pdef, key, sig))
            n += 1
    return n


def check_results(instance, run_id: str) -> list[str]:
    """One line per asset check evaluated in a run: asset, check, partition, PASSED/FAILED and why."""
    from dagster import DagsterEventType

    lines = []
    for e in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION):
        ev = e.dagster_event.event_specific_data
        line = (
            f"{ev.asset_key.to_user_string()}.{ev.check_name} [{ev.partition}]: {'PASSED' if ev.passed else 'FAILED'}"
        )
        if not ev.passed:
            md = ev.metadata
            table = (md.get("failures") or md.get("details")).value
            cells = table.splitlines()
            rows = cells[next(i for i, r in enumerate(cells) if r.startswith("|---")) + 1 :]
            files = sorted({r.split(" | ")[0].strip("| ") for r in rows if r.startswith("|")})
            line += f" ({', '.join(files)})"
        lines.append(line)
    return sorted(lines)


def materialize(bindir: str, env: dict, instance, select: str, key: str, config: dict | None) -> None:
    """One `dagster asset materialize` of a partition, its report lines and its checks."""
    cmd = [
        os.path.join(bindir, "dagster"),
        "asset",
        "materialize",
        "-m",
        "npzfix_dagster.definitions",
        "--select",
        select,
        "--partition",
        key,
    ]
    if config:
        cmd += ["--config-json", json.dumps(config)]
    print("$ " + shlex.join(cmd), flush=True)
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    for line in (p.stdout + p.stderr).splitlines():
        if "npzfix " in line and ("seen" in line or "npzfix shards" in line):
            print("   " + line.split(" - ")[-1])
        elif line.strip().startswith(
            ("failed:", "missing_source:", "legacy files in", "drift,", "sa1b_shard_", "members by")
        ):
            print("     " + line.strip())
    if p.returncode:
        print(f"   exit status {p.returncode} (failed files are recorded; see the asset checks)")
    for check in check_results(instance, instance.get_runs(limit=1)[0].run_id):
        print(f"   check {check}")


def _phases(bindir: str, env: dict, instance, shards: list[str], sa1b: str) -> None:
    """Phase 1: every asset with its defaults; 2: the features with legacy: verify; 3: the training shards, one
    file repaired again, only its shard rebuilt."""
    runs = [("sa1b_features_fixed,edges_B_v1", k, None) for k in shards]
    runs += [("train_test_features_fixed", k, None) for k in instance.get_dynamic_partitions("train_test_splits")]
    print("phase 1: every asset with its defaults (legacy files are trusted, as the original tools did)")
    for select, key, config in runs:
        materialize(bindir, env, instance, select, key, config)
    print(
        "\nphase 2: the features again with legacy: verify (a sample of each directory's legacy files is "
        "recomputed; all match: adopted, else the directory's legacy files are redone)"
    )
    verify = {"ops": {"sa1b_features_fixed": {"config": {"legacy": "verify"}}}}
    for key in shards:
        materialize(bindir, env, instance, "sa1b_features_fixed", key, verify)
    print(
        "\nphase 3: the training shards the student reads (vfmkd's sa1b_shard_NNNNN.tar, 2 pairs each here), built "
        "from the repaired caches; then one file of sa_000000 is repaired again and only the shard holding it is "
        "rebuilt"
    )
    small = {"ops": {"sa1b_training_shards": {"config": {"shard_size": 2}}}}
    for key in shards:
        materialize(bindir, env, instance, "sa1b_training_shards", key, small)
    ext = os.path.join(sa1b, "sa_000000", "extracted")
    one = sorted(n for n in os.listdir(ext) if n.endswith("_features.npz"))[2]
    cmd = [os.path.join(bindir, "npzfix"), "edges", "--npz-dir", ext, "--glob", one, "--no-skip-if-processed"]
    print("$ " + shlex.join(cmd), flush=True)
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    materialize(bindir, env, instance, "sa1b_training_shards", "sa_000000", small)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default="demo_data")
    ap.add_argument("--home", default="demo_home", help="DAGSTER_HOME for the demo instance")
    ap.add_argument("--resolution", type=int, default=256, help="encoder input (the real teacher uses 1024)")
    a = ap.parse_args()
    data, home = os.path.abspath(a.data), os.path.abspath(a.home)
    for d in (data, home):
        shutil.rmtree(d, ignore_errors=True)
    os.makedirs(home)
    shutil.copy(os.path.join(REPO, "deploy", "dagster.yaml"), os.path.join(home, "dagster.yaml"))
    sa1b, tt = generate(data, a.resolution)
    env = dict(
        os.environ,
        DAGSTER_HOME=home,
        NPZFIX_SA1B_ROOT=sa1b,
        NPZFIX_TRAIN_TEST_ROOT=tt,
        NPZFIX_RANDOM_INIT_SEED="0",
        NPZFIX_RESOLUTION=str(a.resolution),
        NPZFIX_DEVICE="auto",
        NPZFIX_SHARDS_ROOT=os.path.join(data, "shards"),
    )
    bindir = os.path.dirname(sys.executable)
    print(
        f"demo data: {data}\nDagster instance: {home}\nteacher: RANDOMLY INITIALISED SAM2 Hiera-tiny (seed 0), "
        f"input {a.resolution}: a demo of the machinery, not real SAM2 features\n",
        flush=True,
    )
    subprocess.run([os.path.join(bindir, "npzfix"), "partitions", "sync", "-v"], env=env, check=True)
    from dagster import DagsterInstance

    os.environ["DAGSTER_HOME"] = home
    instance = DagsterInstance.get()
    observe(instance, sa1b, tt)
    shards = instance.get_dynamic_partitions("sa1b_dirs")
    _phases(bindir, env, instance, shards, sa1b)
    print(f"shards and their manifests: {os.path.join(data, 'shards')}")
    print(f"\nreports and preview images: {os.path.join(home, 'npzfix_previews')}")
    print(
        f"explore (the UI): cd {REPO} && DAGSTER_HOME={home} NPZFIX_SA1B_ROOT={sa1b} NPZFIX_TRAIN_TEST_ROOT={tt} "
        f"NPZFIX_RANDOM_INIT_SEED=0 NPZFIX_RESOLUTION={a.resolution} NPZFIX_SHARDS_ROOT={os.path.join(data, 'shards')} "
        f"{bindir}/dg dev -h 127.0.0.1 -p 3000"
    )
    print(
        "on purpose: in phase 1 sample_valid of sa1b_features_fixed [sa_000000] recomputes the legacy file whose "
        "features are noise and fails naming it; phase 2 redoes it and adopts sa_000002's verified legacy files. "
        "The corrupt file in sa_000001 is the only failure left, and the only reason for the red checks of "
        "phase 2 (no_failed_files and sample_valid of sa_000001, each naming that file)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The training shards downstream of the caches: one shard directory per partition, rebuilt where a member changed.

Each asset depends on the caches of its partition, so after a repair the UI shows it stale; its run rebuilds only
the shards holding changed, added or removed members (``npzfix_core.shards``) and, optionally, runs the user's own
next step (e.g. vfmkd's ``convert_tar_to_bin.py``) on each rebuilt shard through Dagster Pipes.
"""

import os
import shlex
from typing import Optional

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AutomationCondition,
    Config,
    Failure,
    MaterializeResult,
    PipesSubprocessClient,
    asset,
)
from pydantic import Field

from npzfix_dagster.contracts import EDGES, SA1B_FEATURES, SA1B_SHARDS, TRAIN_TEST_FEATURES, TRAIN_TEST_SHARDS
from npzfix_dagster.partitions import PartitionKeyError, key_dir, sa1b_dir, sa1b_dirs, split_extracted_dir
from npzfix_dagster.partitions import train_test_splits
from npzfix_dagster.resources import DatasetRoots
from npzfix_dagster.execution.pipes import quiet_pipes


class ShardsConfig(Config):
    """Mirrors ``npzfix shards``."""

    shard_size: int = Field(1000, description="pairs per shard (the user's create_sa1b_tar_shards.py default)")
    dry_run: bool = False
    command: Optional[str] = Field(
        None,
        description="run for each rebuilt shard through Dagster Pipes, e.g. 'python tools/core/data/"
        "convert_tar_to_bin.py --tar-path {shard} --output-dir {out}/bin' ({shard}, {out}, {partition})",
    )


def _shard_dir(roots: DatasetRoots, group: str, key: str) -> str:
    try:
        key_dir("/", key)  # the same lexical checks as the caches' keys: no '..', relative, normalised
    except PartitionKeyError as exc:
        raise Failure(description=f"refusing partition {key!r}: {exc}; no file was touched") from exc
    return roots.shards(group, key)


def _run_commands(context, template: str, rebuilt: list[dict], out: str, pipes: PipesSubprocessClient) -> list[dict]:
    """The user's command for each rebuilt shard, its logs and reported metadata in this run."""
    done = []
    for r in rebuilt:
        if not r["members"]:
            continue
        shard = os.path.join(out, r["name"])
        words = [w.format(shard=shard, out=out, partition=context.partition_key) for w in shlex.split(template)]
        with quiet_pipes():
            invocation = pipes.run(command=words, context=context, extras={"shard": shard})
            results = invocation.get_results(implicit_materializations=False)
        reported = {}
        for result in results:
            reported.update({k: str(getattr(v, "value", v)) for k, v in (result.metadata or {}).items()})
        done.append({"shard": r["name"], "command": shlex.join(words), **reported})
    return done


def _sync(context, config: ShardsConfig, npz_dir: str, out: str, pipes: PipesSubprocessClient) -> MaterializeResult:
    from npzfix_core import shards
    from npzfix_dagster.metadata import shards_metadata

    try:
        report = shards.sync(npz_dir, out, None, config.shard_size, config.dry_run)
    except shards.ManifestError as exc:
        raise Failure(description=str(exc)) from exc
    except ValueError as exc:
        raise Failure(description=f"bad run config: {exc}; no shard was touched") from exc
    context.log.info(report.summary())
    if config.command and not config.dry_run:
        report.commands = _run_commands(context, config.command, report.rebuilt, out, pipes)
    return MaterializeResult(metadata=shards_metadata(report))


def shards_asset(name: str, partitions_def, deps: list[str], group: str, root: str, to_dir, description: str):
    """A partition's training shards, downstream of its caches: one definition for both kinds of partition."""

    @asset(
        name=name,
        partitions_def=partitions_def,
        deps=[AssetKey(d) for d in deps],
        automation_condition=AutomationCondition.eager(),  # after a repair of its partition, with the automation sensor
        group_name=group,
        kinds={"tar", "parquet"},
        description=description,
    )
    def _shards(
        context: AssetExecutionContext,
        config: ShardsConfig,
        roots: DatasetRoots,
        pipes_subprocess_client: PipesSubprocessClient,
    ) -> MaterializeResult:
        from npzfix_dagster.assets import _partition_dir

        npz_dir = _partition_dir(roots.require(root), context.partition_key, to_dir)
        out = _shard_dir(roots, group, context.partition_key)
        return _sync(context, config, npz_dir, out, pipes_subprocess_client)

    return _shards


sa1b_training_shards = shards_asset(
    SA1B_SHARDS,
    sa1b_dirs,
    [SA1B_FEATURES, EDGES],
    "sa1b",
    "sa1b_root",
    sa1b_dir,
    "The tar shards the student reads for this directory (sa1b_shard_NNNNN.tar: <stem>_features.npz + <stem>.jpg, "
    "as vfmkd's create_sa1b_tar_shards.py packs them), each holding the repaired files; a manifest keeps every "
    "member in its shard.",
)
train_test_training_shards = shards_asset(
    TRAIN_TEST_SHARDS,
    train_test_splits,
    [TRAIN_TEST_FEATURES],
    "train_test",
    "train_test_root",
    split_extracted_dir,
    "The tar shards of this split's repaired NPZ files and their images.",
)

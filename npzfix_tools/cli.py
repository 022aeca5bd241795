"""The ``npzfix`` console script: the core's commands plus ``partitions`` (which needs a Dagster instance).

Dagster is imported only when ``partitions`` runs, so ``npzfix --help`` and the
core commands start fast.
"""

from __future__ import annotations

import os
import sys

from npzfix_core import cli as core_cli


def cmd_partitions(args) -> int:
    from dagster import DagsterInstance

    from npzfix_dagster import partitions

    sa1b = args.sa1b_root or os.environ.get("NPZFIX_SA1B_ROOT")
    tt = args.train_test_root or os.environ.get("NPZFIX_TRAIN_TEST_ROOT")
    if not os.environ.get("DAGSTER_HOME"):
        raise core_cli.UsageError("DAGSTER_HOME is not set: partitions live in a Dagster instance")
    for name, root in (("--sa1b-root", sa1b), ("--train-test-root", tt)):
        if root and not os.path.isdir(root):
            raise core_cli.UsageError(f"{name} {root} is not a directory")
    instance = DagsterInstance.get()
    if args.action == "sync":
        if not sa1b and not tt:
            raise core_cli.UsageError(
                "nothing to sync: set NPZFIX_SA1B_ROOT / NPZFIX_TRAIN_TEST_ROOT or pass the roots"
            )
        added = partitions.sync(instance, sa1b, tt)
        for old_new in added.pop("migrated", []):
            print(f"sa1b_dirs: renamed {old_new} (short keys stay distinguishable in the UI)")
        for name, keys in added.items():
            print(
                f"{name}: added {len(keys)}"
                + (f" ({', '.join(keys[:10])}{' ...' if len(keys) > 10 else ''})" if keys else "")
            )
    for name in (partitions.sa1b_dirs.name, partitions.train_test_splits.name):
        keys = instance.get_dynamic_partitions(name)
        if args.action == "list" or args.verbose:
            print(f"{name}: {len(keys)} partition(s)")
            for k in keys:
                print(f"  {k}")
    return 0


def add_partitions(sub) -> None:
    p = sub.add_parser("partitions", help="add/list the Dagster dynamic partitions for the dataset directories")
    p.add_argument("action", choices=("sync", "list"))
    p.add_argument("--sa1b-root", help="default $NPZFIX_SA1B_ROOT")
    p.add_argument("--train-test-root", help="default $NPZFIX_TRAIN_TEST_ROOT")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(fn=cmd_partitions, log=None)


def main(argv: list[str] | None = None) -> int:
    return core_cli.main(argv, parser=core_cli.build_parser(add_partitions))


if __name__ == "__main__":
    sys.exit(main())

"""Where the Dagster instance keeps its files, and npzfix its reports, previews, shards and Slurm step files by
default."""

import os


def dagster_home() -> str:
    return os.environ.get("DAGSTER_HOME") or os.path.expanduser("~/.dagster")

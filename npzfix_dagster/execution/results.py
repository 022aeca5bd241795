"""What the UI shows of a partition step, from its outcome: the materialization's metadata, both check results and
the data version, built the same way in the step's own process and in a Slurm job (then sent through Pipes)."""

from __future__ import annotations

from typing import Optional

from npzfix_core import discovery, outputs, preview, store
from npzfix_core.discovery import DirSnapshot
from npzfix_dagster import asset_checks, metadata
from npzfix_dagster.execution.steps import FeatureStep, Place, Step, StepOutcome, directory_of


def materialization(
    place: Place, step: Step, seen_dir: Optional[DirSnapshot], outcome: StepOutcome
) -> tuple[dict, list, str]:
    """Metadata, check results and data version of a partition step, from its outcome: report file, preview, the
    checks over the directory as the run left it, and a digest of its files (a repair changes it: the training
    shards downstream show stale). The same for every asset, wherever the step ran."""
    report = outcome.report
    directory = directory_of(step)
    json_path, _ = report.write(place.base() + ".report")
    if seen_dir is not None:
        after = discovery.snapshot(directory)
        # what the daily re-check compares with: the directory as the run left it, unless names changed while it
        # ran (then the start, so that the change is seen)
        seen_dir = after if after.signature == seen_dir.signature else seen_dir
    png = preview.render(outcome.paths, place.base() + ".preview.png")
    md = {
        **metadata.report_metadata(report, directory, json_path, seen_dir),
        **metadata.preview_metadata(png),
        **outcome.facts,
    }
    extra = {"tolerance": step.request.tolerance.describe()} if isinstance(step, FeatureStep) else None
    owned = (
        (*outputs.feature_names(), *outputs.FEATURE_FLAGS)
        if isinstance(step, FeatureStep)
        else (*outputs.EDGE_MAPS, *outputs.EDGE_FLAGS)
    )
    version = store.content_version(outcome.paths, owned)
    return md, [asset_checks.no_failed_files(report), asset_checks.sample_valid(outcome.sample, extra)], version

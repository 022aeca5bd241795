"""Dagster Pipes as npzfix uses it (a Slurm job's report, the user's per-shard command): metadata typed for the
wire, and Dagster's own Pipes warnings kept out of the user's log."""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator, Mapping

from dagster import MetadataValue, PreviewWarning

PIPES_TYPES = {
    "PathMetadataValue": "path",
    "MarkdownMetadataValue": "md",
    "JsonMetadataValue": "json",
    "TextMetadataValue": "text",
    "IntMetadataValue": "int",
    "FloatMetadataValue": "float",
    "BoolMetadataValue": "bool",
    "UrlMetadataValue": "url",
}



def to_pipes(md: Mapping[str, Any]) -> dict:
    """Dagster metadata as Pipes sends it: each value with its type, so that the UI shows what a local run shows."""
    out = {}
    for k, v in md.items():
        kind = PIPES_TYPES.get(type(v).__name__)
        out[k] = {"raw_value": v.value, "type": kind} if kind else v
    return out


def from_pipes(md: Mapping[str, Any]) -> dict:
    """The inverse of ``to_pipes`` (for messages that Dagster does not decode itself: the sample-list op's)."""
    make = {"path": MetadataValue.path, "md": MetadataValue.md, "json": MetadataValue.json,
            "text": MetadataValue.text, "url": MetadataValue.url}
    out = {}
    for k, v in md.items():
        if isinstance(v, dict) and "raw_value" in v:
            v = make[v["type"]](v["raw_value"]) if v["type"] in make else v["raw_value"]
        out[k] = v
    return out


@contextlib.contextmanager
def quiet_pipes() -> Iterator[None]:
    """Dagster 1.13's Pipes calls its own preview and deprecated API (expected_writer_count, context.run_id): its
    warnings are Dagster's, not the user's, so they are kept out of every run's log."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PreviewWarning)
        warnings.filterwarnings("ignore", "AssetExecutionContext.run_id is deprecated", DeprecationWarning)
        yield

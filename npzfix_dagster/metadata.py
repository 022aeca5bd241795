"""A core RunReport (and check results, preview) as Dagster metadata."""

from __future__ import annotations

import base64
import os

from dagster import MetadataValue

from npzfix_core import outputs
from npzfix_core.discovery import DirSnapshot
from npzfix_core.report import WOULD_UPDATE, RunReport, drift_line
from npzfix_dagster.contracts import Md

MAX_ROWS = 50
COUNT_LABELS = {WOULD_UPDATE: "would_update (dry run)"}  # every other count is labelled by its status


def md_table(rows: list[dict], cols: list[str]) -> str:
    if not rows:
        return "_none_"
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows[:MAX_ROWS]:
        lines.append("| " + " | ".join(str(r.get(c, "")).replace("|", "\\|") for c in cols) + " |")
    if len(rows) > MAX_ROWS:
        lines.append(f"\n… and {len(rows) - MAX_ROWS} more (see the report JSON)")
    return "\n".join(lines)


def files_table(rows: list[dict], cols: list[str]) -> str:
    """``md_table`` of per-file rows with the file name first: the UI cuts long cells, and an absolute path in
    the first column squeezes the reason to a letter per line. The directory is said once, above, when the
    rows share one (a partition's always do), else in a last column."""
    if not rows:
        return "_none_"
    dirs = {os.path.dirname(r["path"]) for r in rows[:MAX_ROWS]}
    named = [{**r, "file": os.path.basename(r["path"]), "directory": os.path.dirname(r["path"])} for r in rows]
    if len(dirs) == 1:
        return f"in `{dirs.pop()}`:\n\n" + md_table(named, ["file", *cols])
    return md_table(named, ["file", *cols, "directory"])


def report_metadata(
    report: RunReport, directory: str, report_path: str | None, seen_dir: DirSnapshot | None = None
) -> dict:
    md = {
        "directory": MetadataValue.path(directory),
        "seen": report.seen,
        **{COUNT_LABELS.get(status, status): n for status, n in report.counts.items()},
        "files_per_s": round(report.files_per_s, 2),
        "duration_s": round(report.elapsed, 2),
        "failures": MetadataValue.md(files_table(report.failures, ["status", "reason"])),
        Md.PROVENANCE: MetadataValue.json(report.provenance),
    }
    if report.timings:
        md["timings"] = MetadataValue.json(report.timings)
    if report.warnings:
        md["warnings"] = MetadataValue.md("\n".join(f"- {w}" for w in report.warnings))
    if report.stopped_early:
        md[Md.STOPPED_EARLY] = report.stopped_early
    if report.legacy:  # --legacy verify: per directory, what was verified, adopted or redone, and why
        md["legacy"] = MetadataValue.md(
            md_table(report.legacy, ["directory", "legacy_files", "sampled", "matched", "decision", "why"])
        )
    if report.drift:
        md["drift"] = MetadataValue.json(report.drift)
        if report.drift.get("sampled"):
            md["drift_summary"] = MetadataValue.text(drift_line(report.drift))
        for key in outputs.computed_names():
            if key in report.drift:
                md[f"drift_min_cosine_{key}"] = report.drift[key]["min_cosine"]
    if seen_dir is not None:  # what the daily re-check compares with, without reading the files again
        md[Md.DIR_MTIME_NS] = MetadataValue.text(str(seen_dir.mtime_ns))
        md[Md.NPZ_SIGNATURE] = MetadataValue.text(seen_dir.signature)
    if report_path:
        md["report"] = MetadataValue.path(report_path)
    return md


def preview_metadata(png: str | None) -> dict:
    """The full PNG by path, and a small JPEG thumbnail inline (event logs keep every materialization)."""
    import cv2

    img = cv2.imread(png) if png and os.path.exists(png) else None
    if img is None:
        return {}
    thumb = cv2.resize(img, (img.shape[1] // 2, img.shape[0] // 2), interpolation=cv2.INTER_AREA)
    ok, jpg = cv2.imencode(".jpg", thumb, [cv2.IMWRITE_JPEG_QUALITY, 80])
    md = {"preview": MetadataValue.path(png)}
    if ok:
        b64 = base64.b64encode(jpg.tobytes()).decode()
        md["preview_image"] = MetadataValue.md(f"image | edges | P4 PCA\n\n![preview](data:image/jpeg;base64,{b64})")
    return md


def shards_metadata(report) -> dict:
    """A shard run as people read it: counts, bytes, members per reason, and the rebuilt shards by name."""
    rows = [
        {
            "shard": r["name"],
            "members": r["members"],
            "why": ", ".join(f"{k} {v}" for k, v in sorted(r["reasons"].items())),
            "MiB": f"{r.get('bytes', 0) / 2**20:.1f}",
        }
        for r in report.rebuilt[:200]
    ]
    md = {
        "members": report.members,
        "shards": report.shards,
        "shards_rebuilt": len(report.rebuilt),
        "shards_new": report.new,
        "shards_kept": report.kept,
        "bytes_written": report.bytes_written,
        "members_by_reason": MetadataValue.json(report.reasons),
        "rebuilt": MetadataValue.md(md_table(rows, ["shard", "members", "why", "MiB"])),
        "unpaired_npz": len(report.unpaired),
        "manifest": MetadataValue.path(os.path.join(report.out, "manifest.parquet")),
        "dry_run": report.dry_run,
        "seconds": round(report.seconds, 2),
    }
    if report.commands:
        md["commands"] = MetadataValue.md(
            md_table(report.commands, sorted({k for c in report.commands for k in c}, key=lambda k: k != "shard"))
        )
    return md

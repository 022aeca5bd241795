"""The training shards' manifest (``manifest.parquet``, pandas): one row per member, the shard it was assigned to
once and what its NPZ and image were when that shard was written. Replaced atomically; a damaged one is refused,
never guessed around (guessing would move members between shards)."""

from __future__ import annotations

import os
from typing import Any, Iterable

from npzfix_core.temps import TMP_MARKER

MANIFEST = "manifest.parquet"
COLUMNS = ("stem", "shard", "npz", "image", "npz_size", "npz_mtime_ns", "provenance", "image_size", "image_mtime_ns")


class ManifestError(ValueError):
    """The manifest exists but cannot be read: nothing is rebuilt (guessing would move members between shards)."""


def read_manifest(out: str) -> dict[str, dict[str, Any]]:
    """stem -> its row (what its shard holds); {} when there is none yet."""
    import pandas as pd

    path = os.path.join(out, MANIFEST)
    if not os.path.exists(path):
        return {}
    try:
        frame = pd.read_parquet(path)
        missing = [c for c in COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"columns {missing} missing")
    except Exception as exc:  # pyarrow raises its own types for a damaged file
        raise ManifestError(
            f"{path} cannot be read ({type(exc).__name__}: {exc}); no shard was touched. Restore it, or move it "
            "away to assign every member again and rebuild every shard"
        ) from exc
    return {row["stem"]: row for row in frame.to_dict("records")}


def _write_manifest(out: str, rows: Iterable[dict[str, Any]]) -> None:
    import pandas as pd

    frame = pd.DataFrame(sorted(rows, key=lambda r: (r["shard"], r["stem"])), columns=list(COLUMNS))
    tmp = os.path.join(out, f".{MANIFEST}{TMP_MARKER}{os.getpid()}")
    frame.to_parquet(tmp, index=False)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(out, MANIFEST))

"""What one release writes and a later one reads: the sensor cursor and the metadata the re-check reads back."""

import json
import os

from npzfix_core import discovery
from npzfix_core.provenance import EdgeProvenance, FeatureProvenance
from npzfix_dagster.contracts import DirEntry, Md, SensorCursor

# Verbatim what the sensor of the release before contracts.py stored (a dict per directory).
OLD_CURSOR = json.dumps(
    {
        "root": "/data/sa1b",
        "dirs": {
            ".": {"m": 1700000000000000000, "sub": ["sa_000000"]},
            "sa_000000": {"m": 1700000000000000001, "sub": ["sa_000000/extracted"]},
            "sa_000000/extracted": {"m": 1700000000000000002, "sub": [], "sig": "11:9f2c", "req": "11:9f2c"},
            "sa_000001/extracted": {"m": 1700000000000000003, "sub": [], "sig": "7:aa01", "req": None},
        },
    }
)


def test_a_cursor_of_the_previous_release_still_reads_and_round_trips():
    c = SensorCursor.from_json(OLD_CURSOR, "/data/sa1b")
    assert c.dirs["sa_000000/extracted"] == DirEntry(1700000000000000002, (), "11:9f2c", "11:9f2c")
    assert c.dirs["."].sig is None and c.dirs["."].sub == ("sa_000000",)
    assert c.dirs["sa_000001/extracted"].requested().req == "7:aa01"
    assert json.loads(c.to_json()) == json.loads(OLD_CURSOR)  # the same JSON: a downgrade reads it too
    assert SensorCursor.from_json(OLD_CURSOR, "/other").dirs == {}  # another root: start over
    assert SensorCursor.from_json("{not json", "/data/sa1b").dirs == {}  # unreadable: one full listing, no crash


def test_metadata_of_the_previous_release_still_decides_the_recheck(tmp_path):
    """The keys the schedule reads (Md) are the strings runs have always written."""
    from npzfix_dagster.schedules import decide

    assert (Md.PROVENANCE, Md.STOPPED_EARLY, Md.DIR_MTIME_NS, Md.NPZ_SIGNATURE) == (
        "provenance",
        "stopped_early",
        "dir_mtime_ns",
        "npz_signature",
    )
    d = tmp_path / "extracted"
    d.mkdir()
    teacher = FeatureProvenance("configs/sam2.1/sam2.1_hiera_t.yaml", "random-init:0", "fp32", 256)
    snap = discovery.snapshot(str(d))
    old = {  # as a materialization of the previous release recorded it
        "provenance": {**teacher.as_dict(), "tool": "npzfix 0.1.0"},
        "dir_mtime_ns": str(os.stat(d).st_mtime_ns),
        "npz_signature": snap.signature,
    }
    k3 = {"kernel_size": 3, "rule": "method_b", "version": "B_v1", "tool": "npzfix 0.1.0"}
    edges_old = {**old, "provenance": k3}
    latest = {"sa1b_features_fixed": old, "edges_B_v1": edges_old}
    assert decide("k", str(d), latest, teacher, EdgeProvenance(3)).reason is None
    assert "kernel changed" in decide("k", str(d), latest, teacher, EdgeProvenance(5)).reason
    stopped = {**latest, "edges_B_v1": {**edges_old, "stopped_early": "x"}}
    assert "stopped early" in decide("k", str(d), stopped, teacher, EdgeProvenance(3)).reason

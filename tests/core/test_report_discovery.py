"""Report object and discovery rules (de-dup, symlink loops, sources), on real files."""

import json
import os
import subprocess
import sys

import numpy as np

from npzfix_core import discovery, layouts, store
from npzfix_core.report import FAILED, MISSING, SKIPPED_DONE, UPDATED, Outcome, RunReport


def test_report_counts_exit_code_files_and_dataframe(tmp_path):
    r = RunReport("edges")
    for o in (
        Outcome("a", UPDATED),
        Outcome("b", SKIPPED_DONE),
        Outcome("c", MISSING, "no JSON"),
        Outcome("d", FAILED, "bad zip"),
    ):
        r.add(o)
    r.finish()
    assert (r.seen, r.updated, r.failed, r.exit_code) == (4, 1, 1, 1)
    j, c = r.write(str(tmp_path / "rep"))
    d = json.load(open(j))
    assert d["counts"]["failed"] == 1 and d["seen"] == 4 and "files_per_s" in d
    assert open(c).read().splitlines()[1:] == ["c,missing_source,no JSON", "d,failed,bad zip"]
    df = r.to_dataframe()
    assert list(df["status"]) == ["missing_source", "failed"]
    assert "failed 1" in r.summary()


def _npz(path):
    np.savez(path, x=np.zeros(1))


def test_scan_dedups_and_survives_symlink_loops(tmp_path):
    a = tmp_path / "root" / "a"
    a.mkdir(parents=True)
    for n in ("s1_features.npz", "s1_sam2_features.npz", "s2_sam2_features.npz", "notes.npz", ".hidden_features.npz"):
        _npz(a / n)
    (a / "loop").symlink_to(tmp_path / "root")
    (tmp_path / "root" / "b").mkdir()
    _npz(tmp_path / "root" / "b" / "s3_features.npz")
    got = [os.path.relpath(p, tmp_path / "root") for p in discovery.scan_npz(str(tmp_path / "root"))]
    assert got == ["a/s1_features.npz", "a/s2_sam2_features.npz", "b/s3_features.npz"]
    assert discovery.dataset_dirs(str(tmp_path / "root")) == ["a", "b"]


def test_sources_beside_then_parent_and_json_dir(tmp_path):
    ext = tmp_path / "shard" / "extracted"
    ext.mkdir(parents=True)
    npz = ext / "s_features.npz"
    _npz(npz)
    assert discovery.find_image(str(npz)) is None and discovery.find_json(str(npz)) is None
    (tmp_path / "shard" / "s.JPEG").write_bytes(b"x")
    (tmp_path / "shard" / "s.json").write_text("{}")
    assert discovery.find_image(str(npz)).endswith("shard/s.JPEG")
    assert discovery.find_json(str(npz)).endswith("shard/s.json")
    (ext / "s.png").write_bytes(b"x")
    assert discovery.find_image(str(npz)).endswith("extracted/s.png")
    assert discovery.find_json(str(npz), str(tmp_path)) is None  # an explicit JSON dir is the only place


def test_store_updates_through_a_symlink_and_keeps_it(tmp_path):
    real = tmp_path / "real_features.npz"
    _npz(real)
    link = tmp_path / "link_features.npz"
    link.symlink_to(real)
    store.update(link, {"y": np.ones(2)})
    assert link.is_symlink() and "y" in store.inspect(real)


def test_cli_start_up_imports_no_torch_sam2_or_dagster():
    code = (
        "import sys; from npzfix_tools import cli; from npzfix_core import cli as core;"
        "core.build_parser(cli.add_partitions);"
        "print(sorted(m for m in ('torch', 'sam2', 'dagster', 'cv2', 'pandas') if m in sys.modules))"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stdout + p.stderr


def test_listing_cache_finds_what_stat_finds(tmp_path):
    ext = tmp_path / "shard" / "extracted"
    ext.mkdir(parents=True)
    for i, name in enumerate(["a.jpg", "b.PNG", "c.jpeg", "e.json"]):
        (tmp_path / "shard" / name).write_bytes(b"x")
    (ext / "d.JPG").write_bytes(b"x")
    images = discovery.Listings(discovery.IMAGE_EXTS, size=1)
    jsons = discovery.Listings((".json",), size=1)
    for stem in "abcdef":
        npz = str(ext / f"{stem}_features.npz")
        assert discovery.find_image(npz, listings=images) == discovery.find_image(npz)
        assert discovery.find_json(npz, listings=jsons) == discovery.find_json(npz)


def test_one_mapping_from_exception_to_outcome():
    import json as _json

    from npzfix_core import report, store
    from npzfix_core.edges import AnnotationError

    vanished = FileNotFoundError(2, "No such file", "/d/a_features.npz")
    assert report.outcome_for("/d/a_features.npz", vanished).status == report.MISSING
    assert "file vanished" in report.outcome_for("/d/a_features.npz", vanished).reason
    o = report.outcome_for("p", AnnotationError("annotation 3 has no segmentation"), "/j/a.json")
    assert o.status == report.FAILED and o.reason == "bad input /j/a.json: annotation 3 has no segmentation"
    assert "malformed JSON /j/a.json" in report.outcome_for("p", _json.JSONDecodeError("x", "{", 1), "/j/a.json").reason
    assert report.outcome_for("p", UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"), "/j").reason.startswith(
        "malformed JSON"
    )
    assert report.outcome_for("p", store.NpzError("truncated")).reason == "NPZ: truncated"
    assert report.outcome_for("p", PermissionError(13, "Permission denied", "/d")).reason.startswith("I/O error")


def test_reports_keep_non_utf8_names_and_are_written_atomically(tmp_path, monkeypatch):
    import csv as _csv
    import json as _json

    from npzfix_core import report as rp

    name = os.fsdecode(b"/d/caf\xe9_features.npz")  # a Latin-1 name on a UTF-8 system
    r = rp.RunReport("edges")
    r.add(rp.Outcome(name, rp.FAILED, "NPZ: truncated"))
    j, c = r.finish().write(str(tmp_path / "rep"))
    with open(c, "rb") as f:
        assert b"/d/caf\xe9_features.npz" in f.read()  # the file's own bytes, losslessly
    with open(j) as f:
        assert os.fsencode(_json.load(f)["failures"][0]["path"]) == b"/d/caf\xe9_features.npz"
    with open(c, encoding="utf-8", errors="surrogateescape", newline="") as f:
        assert [row["path"] for row in _csv.DictReader(f)] == [name]
    before = open(j, "rb").read()

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rp.json, "dump", full)
    try:
        r.write(str(tmp_path / "rep"))
        raise AssertionError("should have failed")
    except OSError:
        pass
    assert open(j, "rb").read() == before  # the previous report, not an empty file
    assert [n for n in os.listdir(tmp_path) if ".tmp-" in n] == []


def test_report_and_log_paths_are_checked_before_any_work(tmp_path):
    from tests.support import run_cli

    (tmp_path / "d.json").mkdir()
    p = run_cli("edges", "--npz-dir", tmp_path, "--log", tmp_path, check_rc=2)
    assert "is a directory" in p.stderr and "Traceback" not in p.stderr
    p = run_cli("edges", "--npz-dir", tmp_path, "--report", tmp_path / "d", check_rc=2)
    assert "is a directory" in p.stderr
    (tmp_path / "a_file").write_text("x")
    p = run_cli("edges", "--npz-dir", tmp_path, "--report", tmp_path / "a_file" / "rep", check_rc=2)
    assert "cannot create" in p.stderr
    # a report that fails only when written: said as such, after the run's own summary
    p = run_cli("edges", "--npz-dir", tmp_path, "--report", "/proc/npzfix/rep", check_rc=1)
    assert "npzfix edges: seen 0" in p.stdout and "report was not written" in p.stderr


def test_progress_lines_give_done_rate_eta_and_thin_out(caplog, monkeypatch):
    """A long partition is never silent for more than 5 minutes, yet logs tens of lines, not one per 10 s."""
    import logging

    from npzfix_core import progress
    from npzfix_core import report as report_mod

    now = [1000.0]
    monkeypatch.setattr(progress.time, "time", lambda: now[0])
    bar = progress.Progress(3600, "edges", enabled=True)  # not a terminal under pytest: log lines
    rep = report_mod.RunReport("edges")
    with caplog.at_level(logging.INFO, logger="npzfix"):
        for _ in range(3600):  # one file a second for an hour
            now[0] += 1.0
            rep.add(report_mod.Outcome("x", report_mod.UPDATED))
            bar.step(rep)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("edges:")]
    assert lines[0] == "edges: 10/3600 files (0.3 %), 1.0 files/s, ETA 60 min; updated 10"
    assert lines[-1] == "edges: 3310/3600 files (91.9 %), 1.0 files/s, ETA 5 min; updated 3310"
    assert len(lines) == 15  # at 10, 30, 70, 150, 310, 610 s, then every 300 s


def test_sample_lists_take_any_path_bytes_and_repeat_nothing(tmp_path):
    """Before: one non-UTF-8 line stopped the run with a UnicodeDecodeError before any file; repeated lines were
    encoded and rewritten again."""
    d = tmp_path / "imgs"
    d.mkdir()
    latin = os.fsencode(str(d)) + b"/caf\xe9.jpg"  # a Latin-1 file name: not UTF-8, a valid path
    open(latin, "wb").write(b"jpeg")
    open(os.fsencode(str(d)) + b"/caf\xe9_features.npz", "wb").write(b"npz")
    (d / "b.jpg").write_bytes(b"jpeg")
    (d / "b_features.npz").write_bytes(b"npz")
    listing = tmp_path / "list.txt"
    listing.write_bytes(latin + b"\n" + str(d / "b.jpg").encode() + b"\n" + latin + b"\n" + b"/no/such\xff.jpg\n")
    items = list(layouts.sample_items(str(listing), []))
    assert [os.fsencode(it.source or "") for it in items[:2]] == [latin, str(d / "b.jpg").encode()]
    assert items[0].npz and os.path.exists(items[0].npz) and items[0].problem is None
    assert len(items) == 3 and items[2].npz is None and "no NPZ found" in items[2].problem

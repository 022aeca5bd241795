"""Seeded fuzzing of `npzfix edges` with malformed JSON, RLE, polygons and flags.

Every broken input must be a per-file failure whose reason names its JSON (never "unexpected ..."), its
NPZ byte-identical; the batch finishes and the report lists every file. ``NPZFIX_FUZZ_N`` runs more cases
(default: a few seconds' worth in `make test`).
"""

import csv
import json
import math
import os
import random

import numpy as np

from tests.support import run_cli, sha
from npzfix_core import store, synth

N = int(os.environ.get("NPZFIX_FUZZ_N", "60"))


def _garbage(rng: random.Random) -> str:
    return "".join(
        rng.choice("!\"#$%&'()*+,-./0123456789:;<=>?@AZaz[]^_`{|}~é\x7f ") for _ in range(rng.randint(1, 30))
    )


def _mutations(rng: random.Random, doc: dict, h: int, w: int):
    """(name, new JSON text or None to keep, whether the file must fail). Each JSON mutation is invalid."""
    seg = lambda: doc["annotations"][0]["segmentation"]  # noqa: E731

    def set_seg(value):
        d = json.loads(json.dumps(doc))
        d["annotations"][rng.randrange(len(d["annotations"]))]["segmentation"] = value
        return json.dumps(d)

    def set_image(**kw):
        d = json.loads(json.dumps(doc))
        d["image"].update(kw)
        return json.dumps(d)

    def without(key):
        d = json.loads(json.dumps(doc))
        del d[key]
        return json.dumps(d)

    counts = seg()["counts"]
    return [
        ("no annotations key", without("annotations"), True),
        ("no image", without("image"), True),
        ("annotations not a list", json.dumps({**doc, "annotations": rng.choice(["x", 5, {}, None])}), True),
        ("annotation not an object", json.dumps({**doc, "annotations": [rng.choice([1, "a", None, []])]}), True),
        ("height a string", set_image(height=str(h)), True),
        ("height negative", set_image(height=-h), True),
        ("height fractional", set_image(height=h + 0.5), True),
        ("height bool", set_image(height=True), True),
        ("huge image", set_image(height=200_000, width=200_000), True),
        ("counts garbage", set_seg({"size": [h, w], "counts": _garbage(rng)}), True),
        ("counts truncated", set_seg({"size": [h, w], "counts": counts[: max(1, len(counts) // 2)]}), True),
        ("counts empty", set_seg({"size": [h, w], "counts": ""}), True),
        ("counts a number", set_seg({"size": [h, w], "counts": 12345}), True),
        ("counts negative list", set_seg({"size": [h, w], "counts": [-5, h * w + 5]}), True),
        ("counts float list", set_seg({"size": [h, w], "counts": [0.5, h * w - 0.5]}), True),
        ("counts huge list", set_seg({"size": [h, w], "counts": [2**40, 1]}), True),
        ("size wrong", set_seg({"size": [h + 1, w], "counts": counts}), True),
        ("size short", set_seg({"size": [h], "counts": counts}), True),
        ("size zero", set_seg({"size": [0, 0], "counts": counts}), True),
        ("polygon huge", set_seg([[0, 0, 4e8, 0, 4e8, 4e8, 0, 4e8]]), True),
        ("polygon short", set_seg([[1, 2, 3]]), True),
        ("polygon strings", set_seg([["a", "b", "c", "d", "e", "f"]]), True),
        ("polygon nan", set_seg([[0, 0, math.nan, 1, 2, 2]]), True),
        ("polygon inf", set_seg([[0, 0, math.inf, 1, 2, 2]]), True),
        ("segmentation a string", set_seg("abc"), True),
        ("not utf-8", "\udcff", True),
        ("truncated text", json.dumps(doc)[: rng.randint(1, 40)], True),
        ("empty file", "", True),
        ("null", "null", True),
        ("a list", "[]", True),
        ("flag of shape (1,)", None, False),
        ("flag a string", None, False),
    ]


def test_fuzzed_inputs_fail_their_file_only(tmp_path):
    rng = random.Random(1234)
    res = synth.generate(
        tmp_path / "s",
        synth.SynthSpec(n=N, seed=5, sizes=((40, 60), (33, 17)), masks=5, states=("with_256",), feature_hw=4),
    )
    ext = os.path.dirname(res.npz[0])
    expect_fail, kinds = {}, {}
    for i, npz in enumerate(res.npz):
        stem = os.path.basename(npz).replace("_features.npz", "")
        jpath = os.path.join(res.root, stem + ".json")
        with open(jpath) as f:
            doc = json.load(f)
        h, w = doc["image"]["height"], doc["image"]["width"]
        cases = _mutations(rng, doc, h, w)
        name, text, fails = cases[i % len(cases)] if i < len(cases) else rng.choice(cases)
        kinds[npz] = name
        if text is not None:
            with open(jpath, "w", encoding="utf-8", errors="surrogateescape") as f:
                f.write(text)
        elif name == "flag of shape (1,)":
            store.update(npz, {"edge_flag": np.array([1], np.uint8), "edge_version": np.array("B_v0")})
        else:
            store.update(npz, {"edge_flag": np.array("yes")})
        expect_fail[npz] = fails
    digests = {p: sha(p) for p in res.npz}
    rep = tmp_path / "rep"
    run_cli("edges", "--npz-dir", ext, "--skip-if-processed", "--workers", 2, "--report", rep, check_rc=1)
    with open(str(rep) + ".json") as f:
        report = json.load(f)
    with open(str(rep) + ".csv", newline="") as f:
        rows = {r["path"]: r for r in csv.DictReader(f)}
    assert report["seen"] == len(res.npz)
    for npz, fails in expect_fail.items():
        if fails:
            assert npz in rows, kinds[npz]
            reason = rows[npz]["reason"]
            stem = os.path.basename(npz).replace("_features.npz", "")
            assert f"{stem}.json" in reason and "unexpected" not in reason, (kinds[npz], reason)
            assert sha(npz) == digests[npz], kinds[npz]
        else:
            assert npz not in rows, (kinds[npz], rows.get(npz))
            assert store.read_flags(npz, ["edge_flag"])["edge_flag"] == 1
    assert report["counts"]["failed"] == sum(expect_fail.values())


def _bomb(h: int, w: int, vertices: int = 100_000) -> list[float]:
    """A polygon alternating between two in-bounds corners: pycocotools would allocate vertices x perimeter."""
    b = 2 * max(h, w) + 1024
    return [float(v) for _ in range(vertices // 2) for v in (-b, -b, b, b)]


def test_a_polygon_bomb_fails_its_own_file_in_every_path(tmp_path):
    """100,000 vertices on a 60x80 image: before, `npzfix edges` (1 worker process) and `npzfix check edges` died of
    a segfault at 9 GB. Now that file fails with its reason, the others are repaired, the report is written."""
    res = synth.generate(
        tmp_path / "s", synth.SynthSpec(n=4, seed=11, sizes=((60, 80),), masks=4, states=("fresh",), feature_hw=4)
    )
    ext = os.path.dirname(res.npz[0])
    bomb_json = os.path.join(res.root, os.path.basename(res.npz[1]).replace("_features.npz", ".json"))
    doc = json.load(open(bomb_json))
    doc["annotations"][0]["segmentation"] = [_bomb(60, 80)]
    json.dump(doc, open(bomb_json, "w"))
    deep_json = os.path.join(res.root, os.path.basename(res.npz[2]).replace("_features.npz", ".json"))
    open(deep_json, "w").write("[" * 100_000 + "]" * 100_000)
    digests = {p: sha(p) for p in res.npz[1:3]}
    for flags in ([], ["--worker-processes", "2"]):
        rep = tmp_path / f"rep{len(flags)}"
        p = run_cli("edges", "--npz-dir", ext, "--no-skip-if-processed", "--report", rep, *flags, check_rc=1)
        assert "updated 2" in p.stdout and "failed 2" in p.stdout, p.stdout + p.stderr
        assert "Traceback" not in p.stderr
        failures = {os.path.basename(f["path"]): f["reason"] for f in json.load(open(f"{rep}.json"))["failures"]}
        assert "polygons with 100000 vertices outline" in failures[os.path.basename(res.npz[1])]
        assert "nested too deeply" in failures[os.path.basename(res.npz[2])]
        assert all(sha(q) == d for q, d in digests.items())
    store.update(res.npz[1], {"edge_flag": np.array(1, np.uint8), "edge_version": np.array("B_v1")})  # "done"
    p = run_cli("check", "edges", "--npz-dir", ext, "--sample", "4", check_rc=1)  # so its JSON is recomputed
    assert "polygons with 100000 vertices" in p.stdout and "Traceback" not in p.stderr

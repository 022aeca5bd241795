"""The ``npzfix`` command: parse flags, build the request the core takes, print the report, exit.

Exit status: 0 nothing failed, 1 some files failed (all others were processed),
2 usage errors.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Callable

log = logging.getLogger("npzfix")


class UsageError(Exception):
    pass


def _writable_file(flag: str, path: str | None) -> None:
    """A --log/--report path must name files we can create: refused before any work (exit 2), not after."""
    if not path:
        return
    base = path[:-5] if path.endswith(".json") else path
    for name in [path] if flag == "--log" else [base + ".json", base + ".csv"]:
        if os.path.isdir(name):
            raise UsageError(f"{flag} {path}: {name} is a directory")
    probe = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK):
        raise UsageError(f"{flag} {path}: cannot create files under {probe}")


def _setup_logging(log_path: str | None, verbose: bool = False) -> None:
    root = logging.getLogger("npzfix")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.handlers.clear()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    err = logging.StreamHandler(sys.stderr)
    err.setFormatter(fmt)
    err.setLevel(logging.WARNING if sys.stderr.isatty() and not verbose else logging.INFO)
    root.addHandler(err)
    if log_path:
        os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
        fh = logging.FileHandler(log_path, encoding="utf-8", errors="surrogateescape")
        fh.setFormatter(fmt)
        root.addHandler(fh)
    root.propagate = False


def _finish(report, args) -> int:
    """Summary first, then the report file: a report that cannot be written is said as such (exit 1 after a
    clean run), never hiding what the run did."""
    print(report.summary())
    base = args.report or (os.path.splitext(args.log)[0] + ".report" if args.log else None)
    if base:
        try:
            j, c = report.write(base)
            print(f"report: {j} (failures: {c})")
        except OSError as exc:
            print(f"npzfix: the run finished as above, but its report was not written: {exc}", file=sys.stderr)
            return max(report.exit_code, 1)
    return report.exit_code


def _positive(v: str) -> int:
    n = int(v)
    if n < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return n


def _non_negative(v: str) -> int:
    n = int(v)
    if n < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return n


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log", help="append progress and errors to this file (a report is written beside it)")
    p.add_argument("--report", help="write the run report here as JSON, and failures as CSV beside it")
    p.add_argument("--dry-run", action="store_true", help="compute and check everything, write nothing")
    p.add_argument(
        "--no-fsync",
        dest="durable",
        action="store_false",
        help="skip fsync after each write (faster on slow disks; a crash may lose recent updates)",
    )
    p.add_argument("-v", "--verbose", action="store_true")


def cmd_edges(args) -> int:
    from npzfix_core.edge_repair import run_edges
    from npzfix_core.requests import EdgeRequest

    if args.json_dir and not os.path.isdir(args.json_dir):
        raise UsageError(f"--json-dir {args.json_dir} is not a directory")
    req = EdgeRequest.from_args(args)
    try:
        req.validate()
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from exc
    return _finish(run_edges(req), args)


def cmd_features(args) -> int:
    from npzfix_core import devices
    from npzfix_core.feature_repair import run_features
    from npzfix_core.requests import BULK, SAMPLES, TRAIN_TEST, FeatureRequest, teacher_spec_from_args
    from npzfix_core.teacher import TeacherError

    modes = [m for m, v in ((BULK, args.root), (SAMPLES, args.samples), (TRAIN_TEST, args.extracted_dirs)) if v]
    if len(modes) != 1:
        raise UsageError("give exactly one of --root (bulk), --samples (sample list), --extracted-dirs (train/test)")
    if args.npz_dirs and modes[0] != SAMPLES:
        raise UsageError("--npz-dirs goes with --samples")
    try:
        device = devices.resolve(args.device, args.gpus) if not args.dry_run else "cpu"
        if not args.dry_run:
            print(f"npzfix features: device {device} (asked: {args.device})", file=sys.stderr)
        req = FeatureRequest.from_args(args, modes[0], teacher_spec_from_args(args, device))
        req.validate()
    except (TeacherError, devices.DeviceError, ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from exc
    try:
        report = run_features(req)
    except (TeacherError, devices.DeviceError) as exc:  # found only once a file needed the teacher
        raise UsageError(str(exc)) from exc
    return _finish(report, args)


def cmd_check(args) -> int:
    """Sampled content check of a directory, as the Dagster asset checks do (exit 1 on any problem): edges are
    recomputed exactly; features are recomputed with the teacher and compared within a tolerance."""
    from npzfix_core import discovery, validate

    if not os.path.isdir(args.npz_dir):
        raise UsageError(f"--npz-dir {args.npz_dir} is not a directory")
    n = args.sample or (16 if args.kind == "edges" else 8)
    paths = validate.sample(discovery.npz_in_dir(args.npz_dir), n, args.seed)
    if args.kind == "edges":
        res = validate.check_edges(paths, args.kernel_size, args.json_dir, recompute=n)
    else:
        res = _check_features(args, paths)
    for pr in res.problems:
        print(f"  {pr['path']}: {pr['problem']} -> {pr['remedy']}")
    if res.verification is not None:
        v = res.verification
        cos = ", ".join(f"{k} {c:.6f}" for k, c in v.min_cosine.items())
        print(
            f"verified by value: {v.verified} recomputed, {v.matched} matched; min cosine {cos or '-'}; "
            f"{v.seconds:.1f} s"
        )
    print(f"npzfix check {args.kind}: {res.checked} file(s) checked, {len(res.problems)} problem(s)")
    return 0 if res.passed else 1


def _check_features(args, paths):
    from npzfix_core import devices, validate
    from npzfix_core.requests import teacher_spec_from_args, tolerance_from_args
    from npzfix_core.teacher import LazyTeacher, TeacherError, provenance

    if args.weights is None and args.random_init_seed is None:
        raise UsageError("check features recomputes sampled files: pass the teacher (--weights or --random-init)")
    try:
        tol = tolerance_from_args(args)
        if args.structure_only:
            print("npzfix check features: --structure-only: values are NOT verified", file=sys.stderr)
            prov = provenance(teacher_spec_from_args(args, "cpu"))
            return validate.check_features(paths, provenance=prov, needs_flag=not args.no_flag)
        teacher = LazyTeacher(teacher_spec_from_args(args, devices.resolve(args.device, args.gpus)))
        return validate.check_features(
            paths, teacher, needs_flag=not args.no_flag, tolerance=tol, image_dir=args.image_dir
        )
    except (TeacherError, devices.DeviceError, ValueError) as exc:
        raise UsageError(str(exc)) from exc


def cmd_synth(args) -> int:
    from npzfix_core import synth

    sizes = tuple(tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(","))
    states = tuple(args.states.split(",")) if args.states else synth.STATES
    bad = [s for s in states if s not in synth.ALL_STATES]
    if bad or any(len(s) != 2 or min(s) < 1 for s in sizes):
        raise UsageError(f"bad --states {bad} or --sizes {args.sizes} (HxW,HxW; states from {synth.ALL_STATES})")
    spec = synth.SynthSpec(
        n=args.n,
        seed=args.seed,
        sizes=sizes,
        masks=args.masks,
        states=states,
        feature_hw=args.feature_hw,
        extracted=args.extracted,
        compressed=args.compressed,
    )
    res = synth.generate(args.out, spec)
    print(f"wrote {len(res.npz)} images, JSONs and NPZs under {res.root}")
    return 0


def _teacher_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", help="SAM2 checkpoint (e.g. sam2.1_hiera_base_plus.pt); config follows from its name")
    p.add_argument("--config", help="SAM2 config, e.g. configs/sam2.1/sam2.1_hiera_b+.yaml")
    p.add_argument(
        "--random-init",
        dest="random_init_seed",
        type=int,
        metavar="SEED",
        help="seeded random teacher, for demos and tests only",
    )
    p.add_argument("--device", default=os.environ.get("NPZFIX_DEVICE", "auto"), help="cpu | cuda | cuda:N | auto")
    p.add_argument("--gpus", help="allowed GPUs, e.g. 1,2,4,5,6,7 (default $NPZFIX_GPUS, else all)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--resolution", type=int, help="encoder input side (default the model's, 1024)")


def _tolerance_flags(p: argparse.ArgumentParser) -> None:
    from npzfix_core.verify import Tolerance

    t = Tolerance()
    p.add_argument(
        "--min-cosine", type=float, default=t.min_cosine, help=f"per key, stored vs teacher (default {t.min_cosine})"
    )
    p.add_argument(
        "--max-rel-error",
        type=float,
        default=t.max_rel_error,
        help=f"per key, max |stored - teacher| / max |teacher| (default {t.max_rel_error})",
    )


def build_parser(add_commands: Callable[[Any], None] | None = None) -> argparse.ArgumentParser:
    """The ``npzfix`` parser; ``add_commands(subparsers)`` adds the commands of another layer (``partitions``)."""
    from npzfix_core import __version__

    ap = argparse.ArgumentParser(prog="npzfix", description="Keep SAM2 feature / edge NPZ caches correct.")
    ap.add_argument("--version", action="version", version=f"npzfix {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)

    e = sub.add_parser("edges", help="rebuild Method-B edge maps (update_edge_maps_from_npz.py)")
    e.add_argument("--npz-dir", required=True)
    e.add_argument("--json-dir", help="where <stem>.json live (default: the NPZ dir, then its parent)")
    e.add_argument("--kernel-size", type=_positive, default=3)
    e.add_argument("--max-files", type=_positive, help="update at most this many files (skipped ones don't count)")
    e.add_argument(
        "--skip-if-processed",
        action="store_true",
        help="skip files flagged by this rule with this kernel size (stale versions are redone)",
    )
    e.add_argument("--set-edge-flag", action="store_true", help="accepted for compatibility: flags are always set")
    e.add_argument("--no-edge-flag", action="store_true", help="write edge maps without flag and provenance")
    e.add_argument(
        "--retry-killed",
        action="store_true",
        help="also try files that killed a worker process in an earlier run (skipped by default)",
    )
    e.add_argument("--order", choices=("name", "mtime"), default="name")
    e.add_argument("--glob", help="only NPZ file names matching this pattern")
    e.add_argument(
        "--worker-processes",
        "--workers",
        dest="worker_processes",
        type=_non_negative,
        default=1,
        help="worker processes (0: one per usable CPU, container limits kept); --workers is the old name",
    )
    _common(e)
    e.set_defaults(fn=cmd_edges)

    f = sub.add_parser(
        "features", help="recompute SAM2 P4/P5 (bulk_fix / fix_npz_features_inplace / fix_train_test_npz)"
    )
    f.add_argument("--root", help="bulk: scan this root recursively; sets feature_flag=1")
    f.add_argument("--samples", help="sample list: image paths, one per line; sets no flag")
    f.add_argument("--npz-dirs", help="sample list: comma-separated dirs searched for NPZs not beside their image")
    f.add_argument("--extracted-dirs", help="train/test: comma-separated <split>/extracted dirs; sets feature_flag=1")
    _teacher_flags(f)
    f.add_argument("--batch-size", type=int, default=0, help="images per encoder call (default: 1 on CPU, 8 on GPU)")
    f.add_argument(
        "--decode-threads",
        "--workers",
        dest="decode_threads",
        type=_positive,
        help="image decode threads (default: the host's cores - 1, 2..16); --workers is the old name",
    )
    f.add_argument("--writers", type=_positive, default=4, help="NPZ writer threads")
    f.add_argument("--max-files", type=_positive, help="update at most this many files (skipped ones don't count)")
    f.add_argument("--max-images", type=_positive, help="the sample-list name for --max-files")
    f.add_argument(
        "--store-dtype",
        choices=("keep", "float32", "float16"),
        default="keep",
        help="keep: an existing key keeps its shape and dtype; new keys are float32 (1,256,H,W)",
    )
    f.add_argument("--force", action="store_true", help="redo files already flagged (same teacher or legacy)")
    f.add_argument(
        "--legacy",
        choices=("skip", "verify", "redo"),
        default="skip",
        help="files flagged by the original tool (no provenance): skip them (the original behaviour); verify a "
        "sample per directory, then adopt them all (stamp provenance) or redo them all; or redo them",
    )
    f.add_argument("--legacy-sample", type=_positive, default=4, help="legacy files recomputed per directory")
    f.add_argument(
        "--drift-sample",
        type=_non_negative,
        default=8,
        help="files redone for another teacher (or a legacy flag) whose old and new features are compared",
    )
    _tolerance_flags(f)
    _common(f)
    f.set_defaults(fn=cmd_features)

    c = sub.add_parser("check", help="check a sample of a directory's files (keys, shapes, values, flags, provenance)")
    c.add_argument("kind", choices=("edges", "features"))
    c.add_argument("--npz-dir", required=True)
    c.add_argument("--sample", type=_positive, help="files to check (default 16 edges, 8 features; all when >= the count)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--kernel-size", type=_positive, default=3, help="edges: the kernel the files should carry")
    c.add_argument("--json-dir", help="edges: where <stem>.json live (sampled files are recomputed exactly)")
    _teacher_flags(c)
    _tolerance_flags(c)
    c.add_argument("--image-dir", help="features: where the images are (default: beside the NPZ, then its parent)")
    c.add_argument("--no-flag", action="store_true", help="features: files of a sample list carry no feature_flag")
    c.add_argument(
        "--structure-only", action="store_true", help="features: skip the recompute (keys, shapes, flags only)"
    )
    c.set_defaults(fn=cmd_check, log=None, verbose=False)

    s = sub.add_parser("synth", help="generate a seeded SA-1B-like dataset (JPEG, JSON, NPZ)")
    s.add_argument("--out", required=True)
    s.add_argument("--n", type=_positive, default=20)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--sizes", default="1500x2250", help="HxW[,HxW...] cycled over images")
    s.add_argument("--masks", type=int, default=100)
    s.add_argument("--states", help="comma list of NPZ states, cycled (default: all)")
    s.add_argument("--feature-hw", type=_positive, default=64, help="P4 side of the stored features")
    s.add_argument("--extracted", default="extracted")
    s.add_argument("--compressed", action="store_true", help="np.savez_compressed NPZs")
    s.set_defaults(fn=cmd_synth)

    if add_commands is not None:
        add_commands(sub)
    return ap


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    ap = parser or build_parser()
    args = ap.parse_args(argv)
    try:
        _writable_file("--log", getattr(args, "log", None))
        _writable_file("--report", getattr(args, "report", None))
        _setup_logging(getattr(args, "log", None), getattr(args, "verbose", False))
        return args.fn(args)
    except UsageError as exc:
        print(f"npzfix: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("npzfix: interrupted; every file is either untouched or fully updated", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
